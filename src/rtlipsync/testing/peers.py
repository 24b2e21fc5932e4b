"""Real WebRTC peers for tests and benchmarks."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

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


class OfferRefused(Exception):
    """The server answered an offer with an error (``status``, ``msg``)."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"offer refused ({status}): {msg}")
        self.status, self.msg = status, msg


class Receiver:
    """An aiortc peer that stamps each video frame and audio packet as it arrives; with
    ``microphone`` it also sends one (silence, or what ``mic.say`` queues)."""

    def __init__(self, microphone: bool = True) -> None:
        self.pc = RTCPeerConnection()
        self.mic = Microphone()
        self.video: list[float] = []
        self.audio: list[float] = []
        self._tasks: list[asyncio.Task] = []
        self.answer: dict[str, Any] = {}  # the server's answer to the offer
        self.pc.addTransceiver("video", direction="recvonly")
        if microphone:
            self.pc.addTrack(self.mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:  # noqa: ANN001
            stamps = self.video if track.kind == "video" else self.audio

            async def pull() -> None:
                try:
                    while True:
                        await track.recv()
                        stamps.append(time.monotonic())
                except Exception:  # noqa: BLE001 - the call ended
                    return

            self._tasks.append(asyncio.ensure_future(pull()))

    async def connect(self, http: httpx.AsyncClient, **fields: Any) -> int:
        """Offer a session (``fields`` join the offer: avatar, mode, resume, …); its id. The
        whole answer is kept in ``answer``."""
        if self.pc.localDescription is None:  # (a refused offer is sent again as it was)
            await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer", **fields}
        reply = await http.post("/offer", json=offer)
        if reply.status_code != 200:
            raise OfferRefused(reply.status_code, reply.json().get("msg", reply.text))
        answer = self.answer = reply.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return int(answer["sessionid"])

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()

    def report(self, label: str, start: float, end: float) -> dict[str, float]:
        video = np.array([t for t in self.video if start <= t <= end])
        audio = np.array([t for t in self.audio if start <= t <= end])
        gaps = np.diff(video) * 1000 if len(video) > 1 else np.array([np.inf])
        audio_gaps = np.diff(audio) * 1000 if len(audio) > 1 else np.array([np.inf])
        row = {
            "frames": len(video),
            "fps": len(video) / max(end - start, 1e-9),
            "max_ms": float(gaps.max()),
            "p99_ms": float(np.percentile(gaps, 99)),
            "underruns": int((audio_gaps > 60).sum()),
            "worst_at_s": float(video[int(np.argmax(gaps)) + 1] - start) if len(video) > 1 else 0.0,
        }
        ok = row["max_ms"] <= 80 and row["p99_ms"] <= 45 and row["underruns"] == 0
        print(
            f"  {label:<36} {row['frames']:5d} frames {row['fps']:5.1f} fps  max gap "
            f"{row['max_ms']:6.0f} ms  p99 {row['p99_ms']:5.0f} ms  audio underruns "
            f"{row['underruns']:3d}  {'ok' if ok else 'MISSED'}"
            f"  (largest gap {row['worst_at_s']:.1f} s in)",
            flush=True,
        )
        return row


async def drain_socket(ws: Any) -> None:
    """Read a WebSocket session's messages until it closes, keeping none: a client that
    reads nothing loses its session, and a test or benchmark often only needs it held."""
    import websockets

    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        return
