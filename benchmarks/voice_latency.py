"""End of the user's speech -> first lip-synced reply frame on the wire, over WebRTC.

A real aiortc peer speaks (espeak speech through its microphone track, paced in real time)
to the server; the LLM is a local zero-latency fake speaking the OpenAI protocol, so what is
measured is our own pipeline: the VAD's end-of-speech wait (``min_silence``, configurable),
recognition (pocketsphinx), the LLM round trip, TTS, the engine and the transport. The
latency is taken at the receiver: from the moment the last speech sample left the peer's
microphone to the first reply audio packet that arrives.

    python benchmarks/voice_latency.py [--turns 10]
Goal: <= 300 ms p50 of our own overhead (the VAD wait excluded, as it is a setting).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI, Reply  # noqa: E402
from rtlipsync.face.avatar import ensure_default_avatar  # noqa: E402
from rtlipsync.server import ServerConfig  # noqa: E402
from rtlipsync.speech.llm import LLMConfig  # noqa: E402
from rtlipsync.speech.vad import VoiceActivity  # noqa: E402
from test_voice import Microphone, speech  # noqa: E402

from _common import machine  # noqa: E402
from conftest import serving, serving_app, wait_for  # noqa: E402

MIN_SILENCE = VoiceActivity().min_silence_windows * 512 / 16000


async def run(base: str, turns: int) -> list[dict[str, float]]:
    pc = RTCPeerConnection()
    mic = Microphone()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTrack(mic)
    loud: list[float] = []  # arrival times of reply audio packets with sound
    tasks = []

    @pc.on("track")
    def on_track(track) -> None:  # noqa: ANN001
        async def pull() -> None:
            try:
                while True:
                    frame = await track.recv()
                    if track.kind == "audio":
                        pcm = frame.to_ndarray().astype(np.float64)
                        if np.sqrt(np.mean(pcm**2)) > 300:
                            loud.append(time.monotonic())
            except Exception:  # noqa: BLE001 - call ended
                return

        tasks.append(asyncio.ensure_future(pull()))

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        answer = r.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        sid = answer["sessionid"]
        await asyncio.sleep(1.5)
        question = speech("hello there")
        results = []
        for _ in range(turns):
            await http.post("/interrupt_talk", json={"sessionid": sid})
            await asyncio.sleep(1.0)
            mark = len(loud)
            duration = mic.say(question)
            spoken_end = time.monotonic() + duration  # queued now, played in real time
            # (arrival times are stamped by the receiving task; polling only decides when to go on)
            if await wait_for(lambda mark=mark: len(loud) > mark, duration + 5):
                state = (await http.get(f"/sessions/{sid}")).json()
                total = loud[mark] - spoken_end
                results.append(
                    {"total": total, **{k: v / 1000 for k, v in state["last_turn"].items()}}
                )
            await asyncio.sleep(2.5)  # let the reply finish
    await pc.close()
    for t in tasks:
        t.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    ensure_default_avatar()
    print(machine())
    fake = FakeOpenAI([Reply(["[neutral] Hi, nice to hear you."]) for _ in range(args.turns)])
    with serving_app(fake.app()) as llm:
        config = ServerConfig(llm=LLMConfig(base_url=f"{llm}/v1", api_key="k"))
        with serving(config) as base:
            results = asyncio.run(run(base, args.turns))
    totals = sorted(1000 * r["total"] for r in results)
    own = [t - 1000 * MIN_SILENCE for t in totals]
    first_frame = statistics.median(1000 * r["first_frame"] for r in results)
    print(f"turns answered: {len(results)} of {args.turns}")
    print(
        f"end of speech -> first reply audio received: p50 {statistics.median(totals):.0f} ms "
        f"(VAD end-of-speech wait {1000 * MIN_SILENCE:.0f} ms included)"
    )
    print(
        f"our own overhead (VAD wait excluded): p50 {statistics.median(own):.0f} ms, "
        f"max {max(own):.0f} ms  (goal <= 300 ms p50)"
    )
    print(
        f"of which recognised text -> first frame sent (LLM, TTS, engine): p50 {first_frame:.0f} ms"
    )


if __name__ == "__main__":
    main()
