"""WebRTC out through aiortc: our own 25 fps video track and a 20 ms audio track.

aiortc's stock `VideoStreamTrack` paces at 30 fps, so we pace ourselves: both tracks are fed
by the session's one clock through small queues, and their timestamps come from the frame
index, so audio and video share one timeline and the browser's RTP/RTCP sync holds. A slow
peer loses the oldest queued frames, never the timeline.

No STUN server is contacted unless configured (`ice_servers`); on a LAN or loopback, host
candidates are enough, and TURN servers can be given for NAT traversal.
"""

from __future__ import annotations

import asyncio
import fractions
import json
from collections import deque

import av
import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
)
from aiortc.jitterbuffer import JitterBuffer

from rtlipsync.media.frames import FPS, PACKET_SAMPLES, SAMPLE_RATE, AVFrame, StateMessages

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class _QueuedTrack(MediaStreamTrack):
    """A track whose `recv` waits for the next item the session clock put in its queue."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self._items: deque[object] = deque(maxlen=maxlen)  # full: the oldest is dropped
        self._ready = asyncio.Event()

    def feed(self, item: object) -> None:
        self._items.append(item)
        self._ready.set()

    def flush(self) -> None:
        self._items.clear()

    async def _next(self) -> object:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class AvatarVideoTrack(_QueuedTrack):
    kind = "video"

    def __init__(self) -> None:
        super().__init__(maxlen=3)

    async def recv(self) -> av.VideoFrame:
        index, image = await self._next()  # type: ignore[misc]
        # The encoders want I420: OpenCV converts ~5x faster than the encoder's own swscale
        # path (VP8 at 512x512: 3.9 instead of 5.6 ms of CPU per frame). Done here, off the
        # event loop, and only for frames actually sent (a slow peer's dropped ones are not).
        yuv = await asyncio.to_thread(cv2.cvtColor, image, cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index * (VIDEO_CLOCK // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame


class AvatarAudioTrack(_QueuedTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__(maxlen=6)

    async def recv(self) -> av.AudioFrame:
        pts, pcm = await self._next()  # type: ignore[misc]
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        return frame


EVENTS_CHANNEL = "events"  # the data channel a peer opens to hear `StateMessages`


class WebRTCSink:
    """Feeds one peer's video and audio tracks from a session (a `FrameSink`), and its
    ``events`` data channel, once the peer opens one, with the state each frame changes."""

    def __init__(self, state: StateMessages | None = None) -> None:
        self.video = AvatarVideoTrack()
        self.audio = AvatarAudioTrack()
        self.state = state
        self.events: RTCDataChannel | None = None

    def put(self, frame: AVFrame) -> None:
        self.video.feed((frame.index, frame.image))
        base = frame.index * 2 * PACKET_SAMPLES
        for k in range(2):
            packet = frame.audio[k * PACKET_SAMPLES : (k + 1) * PACKET_SAMPLES]
            self.audio.feed((base + k * PACKET_SAMPLES, np.ascontiguousarray(packet)))
        if self.state is not None and self.events is not None:
            message = self.state.after(frame)
            if message is not None and self.events.readyState == "open":
                self.events.send(json.dumps(message))

    def flush(self) -> None:
        self.video.flush()
        self.audio.flush()

    def close(self) -> None:
        self.video.stop()
        self.audio.stop()


# The microphone feeds a VAD and a recogniser, not a loudspeaker: it needs no reordering
# cushion. aiortc holds each received audio packet until four more arrive (80 ms), which
# delayed every barge-in and every end of turn by that much; one is enough to deliver in
# order on a LAN, and a packet that comes later than that is dropped, which the VAD and the
# recogniser tolerate.
MIC_PREFETCH = 1


def listen_promptly(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Deliver the peer's microphone ``track`` after one packet of reordering wait instead
    of aiortc's four; False when this aiortc keeps its buffer elsewhere (then nothing
    changes but the delay)."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is track and hasattr(receiver, _JITTER):
            setattr(receiver, _JITTER, JitterBuffer(capacity=16, prefetch=MIC_PREFETCH))
            return True
    return False


_JITTER = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.x: RTCRtpReceiver.__jitter_buffer


def rtc_configuration(ice_servers: list[dict[str, object]] | None = None) -> RTCConfiguration:
    """ICE servers from config: ``[{"urls": "turn:host:3478", "username": .., "credential": ..}]``.

    Empty by default: no public STUN server is contacted unless the operator asks for one.
    """
    servers = [
        RTCIceServer(
            urls=s["urls"],  # type: ignore[arg-type]
            username=s.get("username"),  # type: ignore[arg-type]
            credential=s.get("credential"),  # type: ignore[arg-type]
        )
        for s in ice_servers or []
    ]
    return RTCConfiguration(iceServers=servers)
