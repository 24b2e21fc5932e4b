"""How many speaking sessions hold 25 fps on this machine, VP8-encoded at 512x512.

Each session runs on its real clock with the CPU engine on the built-in 512x512 avatar and
speaks without pause; every frame it hands out is encoded the way aiortc's sender does it
(VP8 video, Opus audio, on worker threads), with a queue that drops the oldest frame when the
encoder falls behind, as our WebRTC tracks do. A session "holds" 25 fps when at least 24.5
frames a second are encoded and the clock never stalls.

    python benchmarks/sessions_capacity.py [--max 8] [--seconds 10] [--avatar NAME | --footage]
Goal: >= 4 sessions.

``--avatar`` measures a prepared avatar of yours (a talking-footage avatar is served from its
bank of real mouths); ``--footage`` makes one without any media: the built-in face rendered
saying a passage, prepared as talking footage.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import time
from collections import deque

import av
import cv2
from aiortc import rtcrtpsender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtlipsync.compose import SessionMaker
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar
from rtlipsync.media.frames import PACKET_SAMPLES, SAMPLE_RATE, AVFrame
from rtlipsync.server import ServerConfig
from rtlipsync.session import Session
from rtlipsync.transport.webrtc import media_pool

from _common import machine

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
TEXT = "I keep talking so that the lips never rest, which is the hardest case for the server. "


class EncodingSink:
    """Encodes what a session sends, like aiortc's sender, and counts it."""

    def __init__(self) -> None:
        # The encoders our WebRTC sender uses: VP8 is `PacedVp8Encoder`, which also holds
        # each frame on its thread until its even departure (the server's pool allows it).
        self.video = rtcrtpsender.get_encoder(VP8)
        self.audio = rtcrtpsender.get_encoder(OPUS)
        self.queue: deque[AVFrame] = deque(maxlen=3)
        self.ready = asyncio.Event()
        self.encoded = 0
        self.dropped = 0
        self.task = asyncio.get_running_loop().create_task(self.run())

    def put(self, frame: AVFrame) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(frame)
        self.ready.set()

    def flush(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        self.task.cancel()

    def _encode(self, frame: AVFrame) -> None:
        yuv = cv2.cvtColor(frame.image, cv2.COLOR_BGR2YUV_I420)  # as our WebRTC track does
        vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.pts, vf.time_base = frame.index * 3600, fractions.Fraction(1, 90000)
        self.video.encode(vf)
        for k in range(2):
            pcm = frame.audio[k * PACKET_SAMPLES : (k + 1) * PACKET_SAMPLES].reshape(1, -1)
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate, af.pts = SAMPLE_RATE, frame.index * 640 + k * PACKET_SAMPLES
            af.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self.audio.encode(af)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            await loop.run_in_executor(None, self._encode, self.queue.popleft())
            self.encoded += 1


async def trial(n: int, seconds: float, avatar) -> list[tuple[float, int]]:  # noqa: ANN001
    asyncio.get_running_loop().set_default_executor(media_pool(n))  # as the server does
    sessions, sinks = [], []
    maker = SessionMaker(ServerConfig())  # sessions wired as the server wires them
    for _ in range(n):
        s = maker.make(avatar)
        sink = EncodingSink()
        s.add_sink(sink)
        s.start()
        sessions.append(s)
        sinks.append(sink)

    async def keep_talking(s: Session) -> None:
        while True:
            if s.stream.pending < 2.0:
                s.say(TEXT)
            await asyncio.sleep(0.5)

    talkers = [asyncio.get_running_loop().create_task(keep_talking(s)) for s in sessions]
    await asyncio.sleep(3.0)  # warm up: rigs, encoders
    start = [(sk.encoded, s.last_index) for sk, s in zip(sinks, sessions, strict=True)]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    out = []
    for (enc0, idx0), sk, s in zip(start, sinks, sessions, strict=True):
        out.append(((sk.encoded - enc0) / elapsed, (s.last_index - idx0)))
    for t in talkers:
        t.cancel()
    for s in sessions:
        await s.close()
    await asyncio.gather(*talkers, return_exceptions=True)
    await maker.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--avatar", help="a prepared avatar (default: the built-in one)")
    parser.add_argument(
        "--footage", action="store_true", help="a footage-bank avatar made from the built-in face"
    )
    args = parser.parse_args()
    ensure_default_avatar()
    name = args.avatar or ("bench-footage" if args.footage else "default")
    if args.footage:
        make_footage_avatar(name)
    avatar = load_avatar(name)
    engine = CpuEngine().open_stream(avatar)
    print(machine())
    print(f"avatar {name}: {avatar.size[0]}x{avatar.size[1]}, served by {type(engine).__name__}")
    best = 0
    for n in range(1, args.max + 1):
        result = asyncio.run(trial(n, args.seconds, avatar))
        fps = [r[0] for r in result]
        clock = [r[1] / args.seconds for r in result]
        holds = min(fps) >= 24.5 and min(clock) >= 24.5
        print(
            f"{n} sessions: encoded fps min {min(fps):.1f} / mean {sum(fps) / n:.1f}; "
            f"clock fps min {min(clock):.1f}  -> {'holds' if holds else 'falls behind'}"
        )
        if not holds:
            break
        best = n
    size = f"{avatar.size[0]}x{avatar.size[1]}"
    print(f"speaking sessions holding 25 fps with VP8 at {size}: {best}  (goal >= 4)")


def make_footage_avatar(name: str) -> None:
    """The built-in face saying a passage, prepared as talking footage (once)."""
    import tempfile
    from pathlib import Path

    from rtlipsync.face.avatar import prepare_avatar
    from rtlipsync.render import render

    passage = (
        "Bob and Pam may buy a map of the bamboo market. Father saw a large dog on the far "
        "hill. Who knew you could see the moon at noon? Eat each peach, then open the window."
    )
    with tempfile.TemporaryDirectory() as tmp:
        video = render("default", Path(tmp) / "talking.mp4", text=passage, progress=False).path
        found = prepare_avatar(name, video, progress=False)["footage"]
    print(found["message"])


if __name__ == "__main__":
    main()
