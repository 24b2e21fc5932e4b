"""Offline speech from espeak-ng, with phoneme timings, in the product's three languages."""

from __future__ import annotations

import numpy as np
import pytest

from rtlipsync.errors import InputError
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.tts import TTSProvider


@pytest.mark.parametrize(
    ("voice", "text"),
    [("en-us", "Good morning, everyone."), ("zh", "你好，世界"), ("ja", "こんにちは")],
)
def test_speaks_with_phoneme_timings(voice: str, text: str) -> None:
    tts = EspeakTTS()
    assert isinstance(tts, TTSProvider)
    speech = tts.synthesize(text, voice=voice)
    assert speech.sample_rate == 22050 and speech.pcm.dtype == np.int16
    assert 0.3 < speech.duration < 5
    assert np.abs(speech.pcm.astype(float)).max() > 3000  # audible, not silence
    starts = [p.start for p in speech.phonemes]
    assert len(starts) >= 3 and starts == sorted(starts)
    assert starts[-1] <= speech.duration
    assert all(p.duration >= 0 for p in speech.phonemes)


def test_phonemes_line_up_with_the_sound() -> None:
    speech = EspeakTTS().synthesize("pa pa pa")
    pcm = speech.pcm.astype(float)
    for p in speech.phonemes:
        if p.symbol == "p":  # the closure of a p is (nearly) silent
            a = int(p.start * speech.sample_rate)
            b = a + int(0.03 * speech.sample_rate)
            assert np.abs(pcm[a:b]).mean() < 0.2 * np.abs(pcm).max()


def test_resampling_to_the_session_rate_keeps_timing() -> None:
    speech = EspeakTTS().synthesize("Hello there.")
    at16 = speech.at_rate(SAMPLE_RATE)
    assert at16.sample_rate == SAMPLE_RATE
    assert abs(at16.duration - speech.duration) < 0.002
    assert at16.phonemes == speech.phonemes


def test_bad_requests() -> None:
    with pytest.raises(InputError, match="empty"):
        EspeakTTS().synthesize("   ")
    with pytest.raises(InputError, match="no voice"):
        EspeakTTS().synthesize("hello", voice="klingon-xx")


def test_openai_compatible_speech_streams_into_the_lips(default_avatar) -> None:
    import asyncio
    import time

    from rtlipsync.session import Session
    from rtlipsync.speech.openai_tts import OpenAITTS
    from rtlipsync.speech.tts import StreamingTTS
    from rtlipsync.testing.fake_openai import FakeOpenAI

    from conftest import serving_app, wait_for

    said = EspeakTTS(rate_wpm=150).synthesize("Streaming speech reaches the lips early.")
    fake = FakeOpenAI(speech=said.at_rate(24_000).pcm, speech_speed=2.0)

    async def main(base: str) -> None:
        tts = OpenAITTS(base_url=f"{base}/v1", api_key="k", model="tts-fake", voice="coral")
        assert isinstance(tts, StreamingTTS)
        session = Session(default_avatar, tts=tts)
        speaking: list[float] = []
        session.on_frame = lambda f: speaking.append(time.monotonic()) if f.speaking else None
        session.start()
        try:
            session.say("Streaming speech reaches the lips early.")
            assert await wait_for(lambda: bool(fake.speech_finished), 10)
            assert speaking and speaking[0] < fake.speech_finished[0] - 0.5  # before the end
            assert session.caption == "Streaming speech reaches the lips early."
            assert await wait_for(lambda: not session.is_speaking, 10)
            assert abs(len(speaking) * 0.04 - said.duration) <= 0.08  # all of it, once
            request = fake.speech_requests[0]
            assert request["model"] == "tts-fake" and request["voice"] == "coral"
            assert request["input"] == "Streaming speech reaches the lips early."
            fake.speech_status = 500  # the service fails: the user is told, nothing hangs
            session.say("This will not be heard.")
            assert await wait_for(lambda: "HTTP 500" in session.notice, 10), session.notice
            assert await wait_for(lambda: not session.is_speaking, 5)
        finally:
            await session.close()

    with serving_app(fake.app()) as base:
        asyncio.run(main(base))
