"""Faults mid-flight, each ending in a defined state: the user is told, the avatar goes back
to idle, the session lives on (or is closed cleanly), and nothing is left behind.

(The language model down, failing mid-stream and too slow are in test_chat.py; the realtime
service dropping or gone in test_realtime.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import websockets

from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.session import Session
from test_session import TEXT, Recorded, Sink, run, step  # (the manual-clock harness)

from conftest import serving, wait_for


class FailsOnce:
    """An engine whose stream raises on the tenth frame of speech it renders."""

    def __init__(self) -> None:
        self.engine = CpuEngine()
        self.name = "fails-once"
        self.spoken = 0
        self.failed = False

    def open_stream(self, avatar):  # noqa: ANN001, ANN201 - the engine port
        stream = self.engine.open_stream(avatar)
        owner = self

        class Stream:
            def __getattr__(self, name: str):  # noqa: ANN204 - everything else as it is
                return getattr(stream, name)

            def frames(self) -> Iterator:
                for frame in stream.frames():
                    if frame.speaking and not owner.failed:
                        owner.spoken += 1
                        if owner.spoken == 10:
                            owner.failed = True
                            raise RuntimeError("out of memory on this frame")
                    yield frame

        return Stream()


def test_an_engine_failing_on_a_frame_ends_that_reply_not_the_session(default_avatar) -> None:
    async def scenario(session: Session, clock, sink: Sink) -> None:  # noqa: ANN001
        session.say(TEXT)
        assert await wait_for(lambda: session.queued_samples > 0, 20)
        await step(clock, 30)
        assert session.stream.__class__.__name__ == "Stream" and engine.failed
        assert "lip-sync engine failed" in session.notice
        before = len(sink.frames)
        await step(clock, 25)
        assert len(sink.frames) == before + 25  # the clock kept going
        assert not any(f.speaking for f in sink.frames[-20:])  # idle after the failure
        assert session.running and not session.is_speaking
        session.say(TEXT)  # and it speaks again
        assert await wait_for(lambda: session.queued_samples > 0, 20)
        await step(clock, 10)
        assert any(f.speaking for f in sink.frames[-5:])

    engine = FailsOnce()

    async def main() -> None:
        from rtlipsync.media.clock import ManualClock

        clock = ManualClock()
        session = Session(default_avatar, engine, tts=Recorded(), clock=clock)
        sink = Sink()
        session.add_sink(sink)
        session.start()
        await clock.settle()
        try:
            await scenario(session, clock, sink)
        finally:
            await session.close()

    asyncio.run(main())


class BreaksMidSentence:
    """A streaming voice whose connection resets after its first half second of audio."""

    name = "breaks"

    def __init__(self) -> None:
        self.finished = threading.Event()

    def stream(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        try:
            tone = np.sin(np.linspace(0, 2 * np.pi * 220 * 0.5, SAMPLE_RATE // 2))
            yield (tone * 8000).astype(np.int16)
            raise ConnectionResetError("the speech service closed the connection")
        finally:
            self.finished.set()

    def synthesize(self, text: str, voice: str | None = None):  # noqa: ANN201
        raise AssertionError("streamed, not synthesized")


def test_a_voice_failing_mid_sentence_plays_what_came_then_goes_idle(default_avatar) -> None:
    voice = BreaksMidSentence()

    async def scenario(session: Session, clock, sink: Sink) -> None:  # noqa: ANN001
        session.say("Hello there, this sentence will not finish.")
        assert await wait_for(lambda: "voice failed" in session.notice, 10), session.notice
        await step(clock, 30)
        heard = sum(f.speaking for f in sink.frames)
        assert 10 <= heard <= 14  # the half second that came (12.5 frames), no more
        assert session.running and not session.is_speaking
        assert voice.finished.wait(5)  # the provider's thread ended
        assert not session._say_tasks

    run(default_avatar, scenario, tts=voice)


def test_a_client_vanishing_mid_utterance_frees_everything(default_avatar) -> None:
    """A WebSocket client whose network vanishes while the avatar speaks: its session ends,
    and the server's threads, descriptors and tasks go back to what they were."""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def own_threads() -> set[str]:
        """Threads but the event loop's pool (a bounded pool that grows lazily)."""
        return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}

    async def vanish(http: httpx.AsyncClient, url: str) -> None:
        ws = await websockets.connect(url)
        sid = json.loads(await ws.recv())["sessionid"]
        await ws.send(json.dumps({"type": "say", "text": TEXT}))
        state: dict = {}
        while not state.get("speaking"):
            message = await ws.recv()
            if isinstance(message, str):
                state = json.loads(message)
        ws.transport.abort()  # no close frame: the network is gone
        for _ in range(100):
            if (await http.get(f"/sessions/{sid}")).status_code == 404:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the vanished client's session lived on")

    async def scenario(base: str) -> None:
        url = base.replace("http://", "ws://") + "/ws?mode=repeat"
        async with httpx.AsyncClient(base_url=base) as http:
            # Twice first, so what is made once and kept (the event loop's thread pool,
            # codecs) exists before counting; then no cycle may leave anything behind.
            for _ in range(2):
                await vanish(http, url)
            await asyncio.sleep(1.0)
            threads, descriptors = own_threads(), fds()
            for _ in range(3):
                await vanish(http, url)
            await asyncio.sleep(1.0)
            now = own_threads()
            assert len(now) <= len(threads), now - threads
            assert fds() <= descriptors + 1
            # (the event loop's thread pool grows to its bound under load, and stays)
            pool = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
            assert len(pool) <= min(32, (os.cpu_count() or 1) + 4)

    with serving() as base:
        asyncio.run(scenario(base))


DISK_FULL = textwrap.dedent(
    """
    import asyncio, resource, signal, sys, time
    from pathlib import Path
    from rtlipsync.face.avatar import load_avatar
    from rtlipsync.session import Session
    from rtlipsync.transport.recorder import Recorder, RecordingFailed

    out = Path(sys.argv[1])

    async def main():
        session = Session(load_avatar("default"))
        frames = []
        session.on_frame = frames.append
        recorder = Recorder(out / "rec.mp4", *session.avatar.size)
        # From here no file of this process may grow past 200 KB: the write that would
        # fails as on a full disk (EFBIG instead of ENOSPC), and nothing is killed for it.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        session.add_sink(recorder)
        session.start()
        session.say("Recording until the disk is full, and then a little longer.")
        deadline = time.monotonic() + 60
        while recorder.error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        failed_at = len(frames)
        await asyncio.sleep(1.0)
        try:
            recorder.close()
            closed = "saved"
        except RecordingFailed as exc:
            closed = str(exc)
        print(repr(recorder.error))
        print(session.notice)
        print(len(frames) - failed_at, session.running)
        print(closed)
        print(sorted(p.name for p in out.iterdir()))
        await session.close()

    asyncio.run(main())
    """
)


def test_a_recording_on_a_full_disk_stops_cleanly_and_the_session_goes_on(
    default_avatar, tmp_path
) -> None:  # noqa: ANN001
    out = tmp_path / "records"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    error, notice, after, closed, files = done.stdout.strip().splitlines()[-5:]
    assert "File too large" in error
    assert notice.startswith("the recording stopped") and "File too large" in notice
    frames_after, running = after.split()
    assert int(frames_after) >= 20 and running == "True"  # ~25 frames in that second
    assert "nothing was saved" in closed
    assert files == "[]"  # no partial file left
