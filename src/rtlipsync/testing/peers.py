"""Real WebRTC peers for tests and benchmarks."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection

from rtlipsync.media.frames import PACKET_SAMPLES, SAMPLE_RATE


class Microphone(MediaStreamTrack):
    """Silence, or whatever `say` queued, in 20 ms frames paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._start: float | None = None
        self._n = 0

    def say(self, pcm: np.ndarray) -> float:
        """Queue speech; returns its duration."""
        for i in range(0, len(pcm), PACKET_SAMPLES):
            chunk = np.zeros(PACKET_SAMPLES, np.int16)
            part = pcm[i : i + PACKET_SAMPLES]
            chunk[: len(part)] = part
            self._queue.append(chunk)
        return len(pcm) / SAMPLE_RATE

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm = self._queue.popleft() if self._queue else np.zeros(PACKET_SAMPLES, np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n * PACKET_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += 1
        return frame


def on_received_audio(
    pc: RTCPeerConnection, hear: Callable[[np.ndarray], None]
) -> list[asyncio.Future]:
    """Call ``hear(pcm)`` with every audio frame the peer receives, as it arrives; the
    returned list holds the tasks that read the tracks (cancel them when done)."""
    tasks: list[asyncio.Future] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def pull() -> None:
            try:
                while True:
                    frame = await track.recv()
                    if track.kind == "audio":
                        hear(frame.to_ndarray())
            except Exception:  # noqa: BLE001 - the call ended
                return

        tasks.append(asyncio.ensure_future(pull()))

    return tasks
