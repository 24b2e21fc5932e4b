"""Barge-in as the user hears it: their voice's first sample -> the avatar audibly ducked,
and -> the avatar quiet, at a real aiortc receiver; and a cough that ducks and resumes.

A real aiortc peer holds a call with the server (in this process). The avatar is made to
talk at a steady level (the local fakes of the OpenAI protocols speak a 20 s buzz, so a
level drop means the avatar was lowered, not a pause between its words). Then the peer's
microphone speaks, paced in real time: from the moment its first voiced packet leaves the
microphone, the receiver's audio is watched for the drop below half the level (ducked) and
below 2 % of it (cut). A 150 ms cough must duck and come back without cutting the reply.

    python benchmarks/barge_in.py [--trials 5] [--modes chat,realtime]

Goal (issue 13): <= 300 ms p50 to audible ducking, <= 600 ms p50 to the cut; a cough
ducks and resumes. Chat mode's TTS and realtime mode's service are zero-latency fakes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from rtlipsync.face.avatar import ensure_default_avatar
from rtlipsync.server import ServerConfig, create_app
from rtlipsync.speech.asr import OpenAIASR
from rtlipsync.speech.llm import LLMConfig
from rtlipsync.speech.openai_tts import OpenAITTS
from rtlipsync.speech.realtime import RealtimeConfig
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply
from rtlipsync.testing.fake_realtime import FakeRealtime
from rtlipsync.testing.peers import Microphone, on_received_audio
from rtlipsync.testing.serving import serving_app
from rtlipsync.testing.speech import espeak_pcm

from _common import machine

DUCKED = 0.5  # of the avatar's level: audibly lowered (-6 dB)
QUIET = 0.02  # of the level: cut
VOICED_RMS = 300.0


def buzz(seconds: float, rate: int = 24_000) -> np.ndarray:
    """A steady voiced buzz (150 Hz and harmonics) for the avatar to say."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    return (wave / np.abs(wave).max() * 6000).astype(np.int16)


class StampedMicrophone(Microphone):
    """The test peer's microphone, noting when the first voiced packet of each thing it is
    given to say leaves it."""

    def __init__(self) -> None:
        super().__init__()
        self.voiced_at: float | None = None
        self.voiced = asyncio.Event()
        self._armed = False

    def say(self, pcm: np.ndarray) -> float:
        self.voiced_at, self._armed = None, True
        self.voiced.clear()
        return super().say(pcm)

    async def recv(self):  # noqa: ANN201 - an av.AudioFrame
        frame = await super().recv()
        if self._armed:
            pcm = frame.to_ndarray().astype(np.float64)
            if np.sqrt(np.mean(pcm**2)) > VOICED_RMS:
                self.voiced_at, self._armed = time.monotonic(), False
                self.voiced.set()
        return frame


class Ear:
    """The receiver: each audio packet's arrival time and level."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.levels: list[float] = []
        self.tasks: list[asyncio.Future] = []

    def hear(self, pcm: np.ndarray) -> None:
        self.times.append(time.monotonic())
        self.levels.append(float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))))

    def level(self, since: float, until: float) -> float:
        sel = [v for t, v in zip(self.times, self.levels, strict=True) if since <= t < until]
        return float(np.median(sel)) if sel else 0.0

    def first_below(self, since: float, share: float, level: float, hold: int = 1) -> float | None:
        """When the audio first fell below ``share`` of ``level`` (for ``hold`` packets)."""
        run = 0
        for i, (t, v) in enumerate(zip(self.times, self.levels, strict=True)):
            if t < since:
                continue
            run = run + 1 if v < share * level else 0
            if run >= hold:
                return self.times[i - hold + 1] - since
        return None


async def call(base: str, mode: str) -> tuple[RTCPeerConnection, StampedMicrophone, Ear, int]:
    pc = RTCPeerConnection()
    mic = StampedMicrophone()
    ear = Ear()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTrack(mic)

    ear.tasks = on_received_audio(pc, ear.hear)

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=base) as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": mode}
        answer = (await http.post("/offer", json=offer)).json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return pc, mic, ear, answer["sessionid"]


async def trial(http: httpx.AsyncClient, sid: int, mode: str, mic, ear, pcm) -> dict:  # noqa: ANN001
    """Make the avatar talk, then say ``pcm`` into the microphone; what the receiver heard."""
    await http.post("/interrupt_talk", json={"sessionid": sid})
    await asyncio.sleep(0.6)
    kind = "chat" if mode == "realtime" else "echo"
    await http.post("/human", json={"sessionid": sid, "text": "Tell me a story.", "type": kind})
    await asyncio.sleep(2.0)
    before = time.monotonic()
    level = ear.level(before - 1.0, before)
    mic.say(pcm)
    await mic.voiced.wait()
    t0 = mic.voiced_at
    await asyncio.sleep(1.5)
    speaking = (await http.get(f"/sessions/{sid}")).json()["speaking"]
    after = ear.level(time.monotonic() - 0.3, time.monotonic())
    ducked = ear.first_below(t0, DUCKED, level)
    cut = ear.first_below(t0, QUIET, level, hold=10)  # 200 ms of quiet: not a dip
    await asyncio.sleep(2.5)  # the user's turn ends and is answered: the next trial cuts it
    return {"level": level, "ducked": ducked, "cut": cut, "after": after, "speaking": speaking}


async def run(base: str, mode: str, trials: int) -> None:
    pc, mic, ear, sid = await call(base, mode)
    voice = espeak_pcm("Wait, stop please, I have a question.")
    cough = espeak_pcm("Hm.")[: int(0.15 * 16000)]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await asyncio.sleep(1.5)
            cuts = [await trial(http, sid, mode, mic, ear, voice) for _ in range(trials)]
            coughs = [await trial(http, sid, mode, mic, ear, cough) for _ in range(2)]
    finally:
        await pc.close()
    ducked = [1000 * r["ducked"] for r in cuts if r["ducked"] is not None]
    cut = [1000 * r["cut"] for r in cuts if r["cut"] is not None]
    print(f"\n{mode} mode, {trials} barge-ins:")
    if ducked:
        print(
            f"  voice onset -> ducked at the receiver: p50 {statistics.median(ducked):.0f} ms, "
            f"max {max(ducked):.0f} ms ({len(ducked)} of {trials}; goal <= 300 ms p50)"
        )
    if cut:
        print(
            f"  voice onset -> quiet at the receiver:  p50 {statistics.median(cut):.0f} ms, "
            f"max {max(cut):.0f} ms ({len(cut)} of {trials}; goal <= 600 ms p50)"
        )
    for i, r in enumerate(coughs, 1):
        back = r["after"] / r["level"] if r["level"] else 0.0
        dip = "ducked" if r["ducked"] is not None else "not ducked"
        print(
            f"  cough {i}: {dip}"
            + (f" at {1000 * r['ducked']:.0f} ms" if r["ducked"] is not None else "")
            + f", {'cut' if r['cut'] is not None else 'not cut'}, still speaking: "
            f"{r['speaking']}, level after {back:.2f} of before (goal: ducked, not cut, ~1.0)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--modes", default="chat,realtime")
    args = parser.parse_args()
    ensure_default_avatar()
    print(machine())
    story = buzz(20.0)
    fake = FakeOpenAI(
        [Reply(["[neutral] Go on."]) for _ in range(100)],
        transcript="wait stop please",
        speech=story,
        speech_speed=1000.0,
    )
    service = FakeRealtime(story, transcript="A long story.", speed=1000.0)
    with serving_app(fake.app()) as api, serving_app(service.app()) as rt:
        fakes = {"base_url": f"{api}/v1", "api_key": "k"}
        config = ServerConfig(
            llm=LLMConfig(**fakes),
            asr=lambda: OpenAIASR(**fakes),
            tts=lambda: OpenAITTS(**fakes),
            realtime=RealtimeConfig(url=rt.replace("http://", "ws://") + "/v1/realtime"),
        )
        with serving_app(create_app(config)) as base:
            for mode in args.modes.split(","):
                asyncio.run(run(base, mode, args.trials))


if __name__ == "__main__":
    main()
