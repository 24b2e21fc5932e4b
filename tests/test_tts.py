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
