"""Lips from known text, end to end: the words come from a service, the timings do not.

A realtime reply (audio deltas with transcript deltas, from the local Realtime fake) and a
chat reply spoken by an OpenAI-compatible TTS (the local HTTP fake) both carry words but no
phoneme timings. The session aligns the words to the audio as it streams; the rendered
frames are read with face landmarks, and the lips must be shut at the middle of at least
90 % of the reply's m/b/p (the truth: espeak-ng's phoneme events for the reply's audio, in a
voice and at a pace the aligner's own spelling does not use).
"""

from __future__ import annotations

import asyncio

import numpy as np

from rtlipsync.eval.bilabials import score
from rtlipsync.face.landmarks import FaceLandmarker
from rtlipsync.session import Session
from rtlipsync.speech.chat import ChatBrain
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.llm import ChatLLM, LLMConfig
from rtlipsync.speech.openai_tts import OpenAITTS
from rtlipsync.speech.realtime import RealtimeBrain, RealtimeConfig
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply
from rtlipsync.testing.fake_realtime import FakeRealtime

from conftest import serving_app, wait_for

REPLY = "Bob and Pam may buy a map of the bamboo market, maybe by the pub."


def reply_speech():
    """The service's voice: not the one the aligner spells with."""
    return EspeakTTS(rate_wpm=150).synthesize(REPLY, "en-us+f2").at_rate(24_000)


class Frames:
    """Images of the speaking frames, in order."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def __call__(self, frame) -> None:  # noqa: ANN001
        if frame.speaking:
            self.images.append(frame.image)


async def converse(session: Session, frames: Frames, question: str) -> None:
    """Ask, and collect the whole spoken answer's frames."""
    session.on_frame = frames
    session.start()
    try:
        session.converse(question)
        assert await wait_for(lambda: len(frames.images) > 10, 10)
        assert await wait_for(lambda: not session.is_speaking, 15)
    finally:
        await session.close()


def assert_lips_shut_on_bilabials(frames: Frames, speech) -> None:  # noqa: ANN001
    assert abs(len(frames.images) * 0.04 - speech.duration) <= 0.12  # all of it, once
    with FaceLandmarker(video=False) as lm:
        report = score(frames.images, speech.phonemes, REPLY, lm)
    assert report.total >= 10
    assert report.shut / report.total >= 0.9, report


def test_realtime_reply_lips_shut_on_its_bilabials(default_avatar) -> None:
    speech = reply_speech()
    fake = FakeRealtime(speech.pcm, transcript=REPLY, speed=3.0)
    frames = Frames()

    async def main(url: str) -> None:
        session = Session(default_avatar)
        session.mode = "realtime"
        config = RealtimeConfig(url=url, api_key="k", model="fake-realtime")
        session.realtime = RealtimeBrain(session, config)
        assert await session.realtime.start()
        await converse(session, frames, "Tell me about the market.")

    with serving_app(fake.app()) as base:
        asyncio.run(main(base.replace("http://", "ws://") + "/v1/realtime"))
    assert_lips_shut_on_bilabials(frames, speech)


def test_chat_reply_by_an_openai_tts_lips_shut_on_its_bilabials(default_avatar) -> None:
    speech = reply_speech()
    fake = FakeOpenAI([Reply([f"[neutral] {REPLY}"])], speech=speech.pcm, speech_speed=3.0)
    frames = Frames()

    async def main(base: str) -> None:
        tts = OpenAITTS(base_url=f"{base}/v1", api_key="k", model="tts-fake", voice="coral")
        session = Session(default_avatar, tts=tts)
        llm = ChatLLM(LLMConfig(base_url=f"{base}/v1", api_key="k", model="fake"))
        session.chat = ChatBrain(llm)
        session.mode = "chat"
        await converse(session, frames, "What can I buy?")

    with serving_app(fake.app()) as base:
        asyncio.run(main(base))
    assert fake.speech_requests and fake.speech_requests[0]["input"] == REPLY
    assert_lips_shut_on_bilabials(frames, speech)
