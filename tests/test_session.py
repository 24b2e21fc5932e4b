"""A session through its own surface, stepped frame by frame on a manual clock: no server,
no network, no waiting for the wall clock. Speech, an interruption mid-word, barge-in (duck
at the first sound, cut once it is speech, back up after a cough), and a mode switch."""

from __future__ import annotations

import asyncio

import numpy as np

from rtlipsync.media.clock import FRAME_PERIOD, ManualClock, MediaClock
from rtlipsync.media.frames import FRAME_SAMPLES, PACKET_SAMPLES, SAMPLE_RATE, AVFrame
from rtlipsync.session import DUCK_GAIN, Session
from rtlipsync.speech.chat import ChatBrain
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.llm import ChatLLM, LLMConfig
from rtlipsync.speech.tts import Speech
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply

from conftest import espeak_pcm, serving_app, wait_for

TEXT = "I am going to tell you a long story about the sea and the ships on it."


class Recorded:
    """A voice that says what the offline voice once said (espeak's output varies by a few
    samples from run to run), so a test knows every sample the session should play."""

    name = "recorded"

    def __init__(self) -> None:
        self.speech = EspeakTTS().synthesize(TEXT).at_rate(SAMPLE_RATE)

    def synthesize(self, text: str, voice: str | None = None) -> Speech:
        assert text == TEXT
        return self.speech


class Sink:
    """A transport's place: takes frames, counts flushes."""

    def __init__(self) -> None:
        self.frames: list[AVFrame] = []
        self.flushes = 0
        self.closed = False

    def put(self, frame: AVFrame) -> None:
        self.frames.append(frame)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def speaking(self) -> list[AVFrame]:
        return [f for f in self.frames if f.speaking]


async def step(clock: ManualClock, frames: int = 1) -> None:
    for _ in range(frames):
        await clock.advance(FRAME_PERIOD)


def run(default_avatar, scenario, tts=None) -> None:  # noqa: ANN001
    async def main() -> None:
        clock = ManualClock()
        session = Session(default_avatar, tts=tts, clock=clock)
        sink = Sink()
        session.add_sink(sink)
        session.start()
        await clock.settle()  # the first frame went out
        try:
            await scenario(session, clock, sink)
        finally:
            await session.close()
        assert sink.closed

    asyncio.run(main())


async def queued(session: Session, text: str) -> int:
    """Say ``text`` and wait (real time: the voice synthesizes in a thread) until it is
    queued; its length in samples, padded to whole frames."""
    session.say(text)
    assert await wait_for(lambda: session.queued_samples > 0, 20)
    return session.queued_samples


def rms(frame: AVFrame) -> float:
    return float(np.sqrt(np.mean(frame.audio.astype(np.float64) ** 2)))


def test_the_clock_paces_frames_and_re_anchors_after_a_stall() -> None:
    async def main() -> None:
        clock = ManualClock()
        ticks: list[tuple[int, float]] = []

        async def tick(k: int) -> None:
            ticks.append((k, round(clock.now(), 3)))
            if k == 5:
                clock.jump(1.0)  # this tick took a second

        media = MediaClock(tick, clock)
        task = asyncio.create_task(media.run())
        await clock.settle()
        await step(clock, 4)
        assert ticks == [(0, 0.0), (1, 0.04), (2, 0.08), (3, 0.12), (4, 0.16)]
        await step(clock, 2)
        # Behind by a second: the next frame goes at once, then the pace resumes from there
        # (no burst of 25 frames to catch up).
        assert ticks[5:] == [(5, 0.2), (6, 1.2), (7, 1.24)] and media.stalls == 1
        task.cancel()

    asyncio.run(main())


def test_speech_plays_whole_in_order_then_idle(default_avatar) -> None:
    voice = Recorded()
    pcm = voice.speech.pcm

    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        samples = await queued(session, TEXT)
        assert samples == -(-len(pcm) // FRAME_SAMPLES) * FRAME_SAMPLES
        await step(clock, samples // FRAME_SAMPLES + 30)
        spoken = sink.speaking()
        assert len(spoken) == samples // FRAME_SAMPLES
        heard = np.concatenate([f.audio for f in spoken])
        assert np.array_equal(heard[: len(pcm)], pcm)  # every sample, at full level
        assert session.caption == TEXT and not session.is_speaking
        assert not sink.frames[-1].speaking and not sink.frames[-1].audio.any()
        indexes = [f.index for f in sink.frames]
        assert indexes == list(range(len(indexes)))  # one timeline, no gaps

    run(default_avatar, scenario, voice)


def test_interrupt_mid_word_stops_within_one_frame(default_avatar) -> None:
    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        await queued(session, TEXT)
        while len(sink.speaking()) < 12:
            await step(clock)
        flushes = len(sink.frames), sink.flushes
        last = session.interrupt()
        assert last == sink.frames[-1].index and sink.flushes == flushes[1] + 1
        await step(clock)
        after = sink.frames[flushes[0] :]
        assert len(after) == 1 and not after[0].speaking and not after[0].audio.any()
        assert session.played_samples == session.queued_samples == 0
        await step(clock, 25)
        assert len(sink.speaking()) == 12 and not session.is_speaking

    run(default_avatar, scenario)


async def listen(session: Session, clock: ManualClock, pcm: np.ndarray) -> list[int]:
    """Play ``pcm`` into the session's microphone as it would arrive, two 20 ms packets per
    frame; the frame count at which each packet went in."""
    at = []
    for i in range(0, len(pcm), 2 * PACKET_SAMPLES):
        session.listen(pcm[i : i + 2 * PACKET_SAMPLES])
        at.append(len(session.history))
        await step(clock)
    return at


def test_barge_in_ducks_at_the_first_sound_then_cuts(default_avatar) -> None:
    voice = np.concatenate([espeak_pcm("Wait, stop please, I have a question."), np.zeros(8000)])

    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        await queued(session, TEXT)
        while len(sink.speaking()) < 10:
            await step(clock)
        full = np.median([rms(f) for f in sink.speaking()])
        before = len(sink.frames)
        ducked_at = cut_at = None
        for i in range(0, len(voice), 2 * PACKET_SAMPLES):
            session.listen(voice[i : i + 2 * PACKET_SAMPLES].astype(np.int16))
            if session.ducked and ducked_at is None:
                ducked_at = len(sink.frames)
            await step(clock)
            if not session.is_speaking and cut_at is None:
                cut_at = len(sink.frames)
        assert ducked_at is not None and cut_at is not None
        # The voice starts with the first packet: ducked within 3 frames (two VAD windows),
        # cut once it had lasted the minimum speech (250 ms) and not much later.
        assert ducked_at - before <= 3
        assert 5 <= cut_at - before <= 12
        ducked = sink.frames[ducked_at + 1 : cut_at - 1]
        assert ducked and all(f.speaking for f in ducked)
        assert max(rms(f) for f in ducked) < 2 * DUCK_GAIN * full  # audibly quieter at once
        assert not session.ducked  # the next reply is heard in full

    run(default_avatar, scenario)


def test_a_cough_ducks_and_comes_back_without_losing_a_word(default_avatar) -> None:
    voice = Recorded()
    pcm = voice.speech.pcm
    cough = np.concatenate([espeak_pcm("Hm.")[: int(0.15 * SAMPLE_RATE)], np.zeros(8000)])

    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        samples = await queued(session, TEXT)
        await step(clock, 20)
        seen = []
        for i in range(0, len(cough), 2 * PACKET_SAMPLES):
            session.listen(cough[i : i + 2 * PACKET_SAMPLES].astype(np.int16))
            seen.append(session.ducked)
            await step(clock)
        assert any(seen) and not session.ducked  # ducked, then back up
        await step(clock, samples // FRAME_SAMPLES)
        spoken = sink.speaking()
        assert len(spoken) == samples // FRAME_SAMPLES  # nothing was cut
        heard = np.concatenate([f.audio for f in spoken])[: len(pcm)].astype(np.float64)
        gain = np.abs(heard).sum() / np.abs(pcm).sum()
        assert 0.8 < gain < 1.0  # quieter only for a moment
        tail = slice(-FRAME_SAMPLES * 20, None)
        assert np.array_equal(heard[tail], pcm[tail])  # and at full level after

    run(default_avatar, scenario, voice)


def test_mode_switch_from_repeating_to_a_language_model(default_avatar) -> None:
    fake = FakeOpenAI([Reply(["I am the model answering."])])

    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        session.converse("Repeat after me.")
        assert "No language model" in session.notice
        assert await wait_for(lambda: session.queued_samples > 0, 20)
        await step(clock, 5)
        assert session.caption == "Repeat after me."
        client = ChatLLM(LLMConfig(base_url=f"{base}/v1", api_key="k", model="m"))
        session.chat, session.mode = ChatBrain(client), "chat"
        try:
            session.converse("Who are you?")  # interrupts the repetition
            assert await wait_for(lambda: session.queued_samples > 0, 20)
            await step(clock, 5)
            assert session.caption == "I am the model answering."
            assert fake.requests[0]["messages"][-1] == {"role": "user", "content": "Who are you?"}
        finally:
            await client.close()

    with serving_app(fake.app()) as base:
        run(default_avatar, scenario)


def test_manual_clock_runs_nothing_until_it_moves(default_avatar) -> None:
    frames = 3

    async def scenario(session: Session, clock: ManualClock, sink: Sink) -> None:
        shown = len(sink.frames)
        await asyncio.sleep(0.3)  # real time passes; the session's time does not
        assert len(sink.frames) == shown
        await step(clock, frames)
        assert len(sink.frames) == shown + frames

    run(default_avatar, scenario)
