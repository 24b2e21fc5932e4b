"""Voice in over WebRTC: a real aiortc peer whose microphone plays speech in real time."""

from __future__ import annotations

import asyncio
import time

import httpx
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.server import ServerConfig
from rtlipsync.speech.llm import LLMConfig
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply
from rtlipsync.testing.peers import Microphone

from conftest import espeak_pcm, serving, serving_app


async def open_call(base: str) -> tuple[RTCPeerConnection, Microphone, int]:
    pc = RTCPeerConnection()
    mic = Microphone()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTrack(mic)  # audio sendrecv: our microphone out, the avatar's voice in
    received: list[asyncio.Future] = []

    @pc.on("track")
    def on_track(track) -> None:  # noqa: ANN001
        async def drain() -> None:
            try:
                while True:
                    await track.recv()
            except Exception:  # noqa: BLE001 - the call ended
                return

        received.append(asyncio.ensure_future(drain()))

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    answer = r.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    pc._test_tasks = received  # type: ignore[attr-defined]
    return pc, mic, answer["sessionid"]


async def hang_up(pc: RTCPeerConnection) -> None:
    await pc.close()
    for task in pc._test_tasks:  # type: ignore[attr-defined]
        task.cancel()
    await asyncio.gather(*pc._test_tasks, return_exceptions=True)  # type: ignore[attr-defined]


def test_spoken_question_gets_a_spoken_answer(default_avatar) -> None:
    fake = FakeOpenAI([Reply(["[happy] I heard you count, thank you."])])

    async def scenario(base: str) -> None:
        pc, mic, sid = await open_call(base)
        async with httpx.AsyncClient(base_url=base) as http:
            await asyncio.sleep(1.0)
            mic.say(espeak_pcm("one two three four five"))
            state = {}

            async def answered() -> bool:
                state.update((await http.get(f"/sessions/{sid}")).json())
                return state["caption"] == "I heard you count, thank you."

            deadline = time.monotonic() + 10
            while not await answered():
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.2)
        assert len({"one", "two", "three", "four", "five"} & set(state["heard"].split())) >= 3
        user = fake.requests[0]["messages"][-1]
        assert user["role"] == "user" and user["content"] == state["heard"]
        await hang_up(pc)

    with serving_app(fake.app()) as llm:
        with serving(ServerConfig(llm=LLMConfig(base_url=f"{llm}/v1", api_key="k"))) as base:
            asyncio.run(scenario(base))


def test_barge_in_and_a_cough_that_does_not(default_avatar) -> None:
    async def scenario(base: str) -> None:
        pc, mic, sid = await open_call(base)
        long_text = "I am going to talk for quite a while now, " * 6
        async with httpx.AsyncClient(base_url=base) as http:

            async def speaking() -> bool:
                return (await http.get(f"/sessions/{sid}")).json()["speaking"]

            await asyncio.sleep(0.5)
            await http.post("/human", json={"sessionid": sid, "text": long_text})
            await asyncio.sleep(1.0)
            assert await speaking()
            mic.say(espeak_pcm("Hm.")[: int(0.15 * SAMPLE_RATE)])  # a cough: too short
            await asyncio.sleep(1.0)
            assert await speaking(), "a cough cut the avatar off"
            t0 = time.monotonic()
            mic.say(espeak_pcm("Wait, stop please, I have a question."))
            while await speaking():
                assert time.monotonic() - t0 < 1.5, "the user's voice did not interrupt"
                await asyncio.sleep(0.05)
            assert time.monotonic() - t0 >= 0.2  # it waited for real speech (250 ms minimum)
        await hang_up(pc)

    with serving() as base:
        asyncio.run(scenario(base))


def test_the_microphone_is_delivered_without_aiortcs_playout_cushion() -> None:
    """The server's receiver of a microphone hands each packet on after one packet of
    reordering wait (aiortc's default is four: 80 ms on every barge-in and end of turn)."""
    from aiortc.jitterbuffer import JitterBuffer

    from rtlipsync.transport.webrtc import MIC_PREFETCH, listen_promptly

    async def scenario() -> None:
        caller, server = RTCPeerConnection(), RTCPeerConnection()
        tracks: list[MediaStreamTrack] = []
        server.on("track", tracks.append)
        caller.addTrack(Microphone())
        await caller.setLocalDescription(await caller.createOffer())
        await server.setRemoteDescription(caller.localDescription)
        (track,) = tracks
        assert listen_promptly(server, track)
        (transceiver,) = server.getTransceivers()
        buffers = [v for v in vars(transceiver.receiver).values() if isinstance(v, JitterBuffer)]
        assert len(buffers) == 1 and buffers[0]._prefetch == MIC_PREFETCH  # noqa: SLF001
        assert not listen_promptly(server, Microphone())  # not one of this peer's tracks
        await caller.close()
        await server.close()

    asyncio.run(scenario())
