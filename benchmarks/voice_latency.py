"""End of the user's speech -> first lip-synced reply frame on the wire, over WebRTC.

A real aiortc peer speaks (espeak speech through its microphone track, paced in real time)
to the server. Recognition, the LLM and the TTS are local zero-latency fakes speaking the
OpenAI protocol (``/v1/audio/transcriptions``, streamed chat completions, streamed
``/v1/audio/speech``), so what is measured is our own pipeline: the VAD's end-of-speech wait
(``--min-silence``, a setting), the three HTTP round trips, the engine and the transport.
``--asr pocketsphinx`` / ``--tts espeak`` put the offline providers back in to see their cost.
Two latencies are taken from the moment the last speech sample left the peer's microphone:
to the first lip-synced reply frame the server puts on the wire (the goal's measure; the
server runs in this process, so its clock is ours), and to the first reply audio packet that
arrives at the peer (adding the network and aiortc's 80 ms receive buffer at the peer).

    python benchmarks/voice_latency.py [--turns 10] [--min-silence 0.5]
        [--asr openai|pocketsphinx] [--tts openai|espeak] [--mode chat|realtime]

``--mode realtime`` talks to a local zero-latency fake of the Realtime API instead (its
server VAD waits 500 ms of quiet, like OpenAI's default).
Goal: <= 300 ms p50 of our own overhead (the VAD wait excluded, as it is a setting).
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
from rtlipsync.speech.asr import OpenAIASR, PocketSphinxASR
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.llm import LLMConfig
from rtlipsync.speech.openai_tts import OpenAITTS
from rtlipsync.speech.realtime import RealtimeConfig
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply
from rtlipsync.testing.fake_realtime import FakeRealtime
from rtlipsync.testing.peers import Microphone, on_received_audio
from rtlipsync.testing.serving import serving_app, wait_for
from rtlipsync.testing.speech import espeak_pcm

from _common import machine


async def run(base: str, turns: int, app, mode: str) -> list[dict[str, float]]:  # noqa: ANN001
    pc = RTCPeerConnection()
    mic = Microphone()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTrack(mic)
    loud: list[float] = []  # arrival times of reply audio packets with sound

    def hear(pcm: np.ndarray) -> None:
        if np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300:
            loud.append(time.monotonic())

    tasks = on_received_audio(pc, hear)

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=base) as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", "mode": mode}
        r = await http.post("/offer", json=offer)
        answer = r.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        sid = answer["sessionid"]
        await asyncio.sleep(1.5)
        question = espeak_pcm("hello there")
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
                turn = app.state.sessions.get(sid).turn
                sent = turn.start + turn.marks["first_frame"]
                results.append(
                    {
                        "total": loud[mark] - spoken_end,
                        "wire": sent - spoken_end,
                        **{k: v / 1000 for k, v in state["last_turn"].items()},
                    }
                )
            await asyncio.sleep(2.5)  # let the reply finish
    await pc.close()
    for t in tasks:
        t.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--min-silence", type=float, default=0.5, help="VAD end-of-turn wait, s")
    parser.add_argument("--asr", choices=["openai", "pocketsphinx"], default="openai")
    parser.add_argument("--tts", choices=["openai", "espeak"], default="openai")
    parser.add_argument("--mode", choices=["chat", "realtime"], default="chat")
    args = parser.parse_args()
    ensure_default_avatar()
    print(machine())
    answer = "Hi, nice to hear you."
    reply = EspeakTTS().synthesize(answer).at_rate(24_000).pcm  # what both fakes say
    fake = FakeOpenAI(
        [Reply([f"[neutral] {answer}"]) for _ in range(args.turns)],
        transcript="hello there",
        speech=reply,
        speech_speed=1000.0,  # zero-latency: all of it at once
    )
    service = FakeRealtime(reply, transcript=answer, speed=1000.0)
    with serving_app(fake.app()) as api, serving_app(service.app()) as rt:
        fakes = {"base_url": f"{api}/v1", "api_key": "k"}
        config = ServerConfig(
            llm=LLMConfig(**fakes),
            asr=(lambda: OpenAIASR(**fakes)) if args.asr == "openai" else PocketSphinxASR,
            tts=(lambda: OpenAITTS(**fakes)) if args.tts == "openai" else EspeakTTS,
            vad={"min_silence": args.min_silence},
            warm_workers=True,  # as `rtlipsync serve` runs
            realtime=RealtimeConfig(url=rt.replace("http://", "ws://") + "/v1/realtime"),
        )
        app = create_app(config)
        with serving_app(app) as base:
            results = asyncio.run(run(base, args.turns, app, args.mode))
    if args.mode == "realtime":
        print("realtime mode against a zero-latency fake service; its VAD waits 500 ms")
        wait = 0.5
    else:
        print(f"providers: asr {args.asr}, llm fake, tts {args.tts}; VAD wait {args.min_silence} s")
        # The VAD decides in 32 ms windows: its wait is min_silence rounded to whole windows.
        wait = round(args.min_silence * 16000 / 512) * 512 / 16000
    totals = sorted(1000 * r["total"] for r in results)
    wire = sorted(1000 * r["wire"] - 1000 * wait for r in results)
    first_frame = statistics.median(1000 * r["first_frame"] for r in results)
    print(f"turns answered: {len(results)} of {args.turns}")
    print(
        f"end of speech -> first reply audio received: p50 {statistics.median(totals):.0f} ms "
        f"(VAD end-of-speech wait {1000 * wait:.0f} ms included)"
    )
    print(
        f"end of speech -> first lip-synced frame on the wire, our own overhead (VAD wait "
        f"excluded): p50 {statistics.median(wire):.0f} ms, max {max(wire):.0f} ms "
        f"(goal <= 300 ms p50)"
    )
    print(f"server's own view, user stopped -> first frame sent: p50 {first_frame:.0f} ms")
    for mark in ("heard", "llm_first_token", "tts_first_audio", "provider_first_audio"):
        values = [1000 * r[mark] for r in results if mark in r]
        if values:
            print(f"  {mark}: p50 {statistics.median(values):.0f} ms after the user stopped")


if __name__ == "__main__":
    main()
