"""Realtime mode against a local server speaking the Realtime GA protocol over a WebSocket."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest

from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.session import Session
from rtlipsync.speech.realtime import RealtimeBrain, RealtimeConfig
from rtlipsync.testing.fake_realtime import FakeRealtime

from conftest import espeak_pcm, serving_app, wait_for

LONG = "I am the realtime service and I am talking for quite a while now, so you can cut me off."


class Timeline:
    """Every frame the session sent, with when."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, bool, np.ndarray]] = []
        self.smiles: list[float] = []

    def __call__(self, frame) -> None:  # noqa: ANN001
        self.frames.append((time.monotonic(), frame.speaking, frame.audio))
        self.smiles.append(frame.mouth.get("smile", 0.0))

    def speaking(self, after: float = 0.0) -> int:
        return sum(1 for t, s, _ in self.frames if s and t > after)

    def first_speaking(self) -> float | None:
        return next((t for t, s, _ in self.frames if s), None)


def run_realtime(default_avatar, fake: FakeRealtime, scenario, **config) -> None:  # noqa: ANN001
    with serving_app(fake.app()) as base:
        url = base.replace("http://", "ws://") + "/v1/realtime"

        async def main() -> None:
            session = Session(default_avatar)
            session.mode = "realtime"
            rt = RealtimeConfig(url=url, api_key="test-key", model="fake-realtime", **config)
            session.realtime = RealtimeBrain(session, rt)
            timeline = Timeline()
            session.on_frame = timeline
            session.start()
            try:
                await scenario(session, timeline, await session.realtime.start())
            finally:
                await session.close()

        asyncio.run(main())


async def feed(session: Session, pcm: np.ndarray, pace: float = 1.0) -> None:
    """Microphone audio in 20 ms pieces, ``pace`` times real time."""
    for i in range(0, len(pcm), 320):
        session.listen(pcm[i : i + 320])
        await asyncio.sleep(0.02 / pace)


def test_typed_turn_streams_the_reply_into_the_lips(default_avatar) -> None:
    reply = espeak_pcm(LONG, 24_000)
    fake = FakeRealtime(reply, transcript=LONG, speed=3.0)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert connected and session.realtime.connected
        assert fake.handshakes[0]["authorization"] == "Bearer test-key"
        assert fake.handshakes[0]["model"] == "fake-realtime"
        update = fake.of_type("session.update")[0]["session"]
        assert update["type"] == "realtime" and update["output_modalities"] == ["audio"]
        assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert update["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert update["audio"]["output"]["voice"] == "marin" and update["instructions"]
        assert update["audio"]["input"]["turn_detection"]["type"] == "server_vad"

        session.converse("Tell me something.")
        assert await wait_for(lambda: timeline.first_speaking() is not None, 5)
        item = fake.of_type("conversation.item.create")[0]["item"]
        assert item["content"] == [{"type": "input_text", "text": "Tell me something."}]
        assert len(fake.of_type("response.create")) == 1
        # The lips moved while the reply was still streaming in.
        assert await wait_for(lambda: len(fake.delta_times) * 100 >= len(reply) / 24, 10)
        assert timeline.first_speaking() < fake.delta_times[-1] - 0.5
        assert await wait_for(lambda: session.caption.startswith("I am the realtime"), 5)
        assert await wait_for(lambda: not session.is_speaking, 15)
        # All of the reply was played, once, and nothing was cancelled.
        frames = timeline.speaking()
        assert abs(frames * 0.04 - len(reply) / 24_000) <= 0.08
        audio = np.concatenate([a for _, s, a in timeline.frames if s]).astype(np.float64)
        assert np.sqrt(np.mean(audio**2)) > 500
        assert not fake.of_type("response.cancel") and not fake.of_type(
            "conversation.item.truncate"
        )
        assert session.caption.endswith("cut me off.")
        assert {"provider_first_audio", "first_frame"} <= set(session.last_turn)
        assert session.notice == ""

    run_realtime(default_avatar, fake, scenario)


def test_spoken_turn_is_sent_as_24k_audio_and_answered(default_avatar) -> None:
    fake = FakeRealtime(espeak_pcm("Sunny and warm.", 24_000), transcript="Sunny and warm.")
    question = espeak_pcm("What is the weather like today?")
    silence = np.zeros(SAMPLE_RATE, np.int16)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert connected
        await feed(session, np.concatenate([silence, question, silence]), pace=2.0)
        assert await wait_for(lambda: timeline.first_speaking() is not None, 5)
        sent = b"".join(
            base64.b64decode(e["audio"]) for e in fake.of_type("input_audio_buffer.append")
        )
        fed = 2 * SAMPLE_RATE + len(question)
        # Resampled to 24 kHz, nothing lost but the streaming filter's delay (< 50 ms).
        assert 0 <= fed * 3 // 2 - len(sent) // 2 <= 1200
        assert len(fake.of_type("response.create")) == 1
        assert await wait_for(lambda: "first_frame" in session.last_turn, 5)
        marks = session.last_turn
        assert marks["heard"] <= marks["provider_first_audio"] <= marks["first_frame"]
        assert await wait_for(lambda: session.caption == "Sunny and warm.", 5)

    run_realtime(default_avatar, fake, scenario)


def test_a_transcribed_spoken_turn_is_heard_and_remembered_before_its_reply(
    default_avatar,
) -> None:
    """With a transcription model, what the user said is shown as heard and kept in the
    conversation's text, before the reply, although its transcript came after the reply."""
    asked = "What is the weather like today?"
    fake = FakeRealtime(
        espeak_pcm("Sunny and warm.", 24_000),
        transcript="Sunny and warm.",
        heard=asked,
        transcription_delay=2.0,  # (after the reply has been remembered)
    )
    silence = np.zeros(SAMPLE_RATE, np.int16)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert connected
        update = fake.of_type("session.update")[0]["session"]
        assert update["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
        await feed(session, np.concatenate([silence, espeak_pcm(asked), silence]), pace=2.0)
        brain = session.realtime
        reply = {"role": "assistant", "content": "Sunny and warm."}
        assert await wait_for(lambda: brain.history == [reply], 10), brain.history
        assert await wait_for(lambda: len(brain.history) == 2, 10), brain.history
        assert brain.history == [
            {"role": "user", "content": asked},
            {"role": "assistant", "content": "Sunny and warm."},
        ]
        assert session.heard == asked

    run_realtime(default_avatar, fake, scenario, transcription_model="gpt-4o-mini-transcribe")


def test_barge_in_cancels_and_truncates_to_what_was_heard(default_avatar) -> None:
    reply = espeak_pcm(LONG, 24_000)
    fake = FakeRealtime(reply, transcript=LONG, speed=1.5, late_deltas=3)
    interruption = espeak_pcm("Wait, stop, I have a question.")

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert connected
        session.converse("Talk to me.")
        assert await wait_for(lambda: timeline.speaking() >= 30, 5)  # 1.2 s heard
        task = asyncio.ensure_future(feed(session, interruption))
        assert await wait_for(lambda: fake.of_type("response.cancel"), 5)
        cut = time.monotonic()
        heard_frames = timeline.speaking()
        # (the truncate is the message after the cancel: wait for it to arrive too)
        assert await wait_for(lambda: fake.of_type("conversation.item.truncate"), 2)
        truncate = fake.of_type("conversation.item.truncate")
        assert len(truncate) == 1
        item = fake.sent_audio_ms
        assert truncate[0]["item_id"] in item and truncate[0]["content_index"] == 0
        end_ms = truncate[0]["audio_end_ms"]
        assert abs(end_ms - 40 * heard_frames) <= 80, (end_ms, heard_frames)
        assert end_ms < len(reply) * 1000 // 24_000 - 500  # it really was cut short
        assert end_ms <= item[truncate[0]["item_id"]]
        await task
        # Not a frame of the cancelled reply plays afterwards, late deltas included.
        await asyncio.sleep(0.2)
        assert timeline.speaking(after=cut + 0.045) == 0
        assert session.notice == ""  # the truncate was valid: the service did not complain
        # The user's question is answered once they stop.
        await feed(session, np.zeros(SAMPLE_RATE, np.int16), pace=4.0)
        assert await wait_for(lambda: len(fake.of_type("response.create")) == 2, 5)
        assert await wait_for(lambda: timeline.speaking(after=cut + 0.5) > 0, 5)

    run_realtime(default_avatar, fake, scenario)


def test_a_cough_does_not_interrupt(default_avatar) -> None:
    reply = espeak_pcm(LONG, 24_000)
    fake = FakeRealtime(reply, transcript=LONG, speed=1.5)
    cough = espeak_pcm("Hm.")[: int(0.15 * SAMPLE_RATE)]

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        session.converse("Talk to me.")
        assert await wait_for(lambda: timeline.speaking() >= 25, 5)
        await feed(session, np.concatenate([cough, np.zeros(SAMPLE_RATE, np.int16)]))
        assert await wait_for(lambda: fake.of_type("conversation.item.delete"), 2)
        deleted = fake.of_type("conversation.item.delete")
        assert len(deleted) == 1  # the service heard it, and it was taken back out
        assert await wait_for(lambda: not session.is_speaking, 15)
        assert not fake.of_type("response.cancel") and not fake.of_type(
            "conversation.item.truncate"
        )
        assert len(fake.of_type("response.create")) == 1
        assert abs(timeline.speaking() * 0.04 - len(reply) / 24_000) <= 0.08  # all of it

    run_realtime(default_avatar, fake, scenario)


def test_dropped_socket_reconnects(default_avatar) -> None:
    fake = FakeRealtime(espeak_pcm(LONG, 24_000), transcript=LONG, speed=2.0, drop_after=8)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        session.converse("Talk to me.")
        assert await wait_for(lambda: "reopened" in session.notice, 10), session.notice
        assert len(fake.handshakes) == 2 and len(fake.of_type("session.update")) == 2
        # What had arrived is played to its end; the session is not stuck speaking.
        assert await wait_for(lambda: not session.is_speaking, 10)
        played = timeline.speaking()
        assert 0 < played * 40 <= 8 * 100 + 80
        session.converse("Are you back?")
        assert await wait_for(lambda: timeline.speaking() > played + 10, 10)
        assert session.mode == "realtime"

    run_realtime(default_avatar, fake, scenario)


def test_the_conversation_goes_on_over_every_new_connection(default_avatar) -> None:
    """What was said is kept as text and told to each new connection before anything else:
    a session continued from elsewhere (restored before it connects) remembers, and so
    does one whose socket dropped and was reopened."""
    answer = "Your name is Ada."
    fake = FakeRealtime(espeak_pcm(answer, 24_000), transcript=answer, speed=4.0)
    earlier = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
    ]

    def told(since: int) -> list[dict]:
        """The items a connection was told right after its session.update."""
        events = fake.events[since:]
        assert events[0]["type"] == "session.update"
        items = []
        for event in events[1:]:
            if event["type"] != "conversation.item.create":
                break
            (content,) = event["item"]["content"]
            items.append({"role": event["item"]["role"], "content": content["text"]})
        return items

    with serving_app(fake.app()) as base:

        async def main() -> None:
            session = Session(default_avatar)
            session.mode = "realtime"
            url = base.replace("http://", "ws://") + "/v1/realtime"
            config = RealtimeConfig(url=url, api_key="test-key", model="fake-realtime")
            session.realtime = RealtimeBrain(session, config)
            session.restore(earlier)
            session.start()
            try:
                assert await session.realtime.start()
                assert await wait_for(lambda: told(0) == earlier, 5), fake.events
                session.converse("What is my name?")
                brain = session.realtime
                assert await wait_for(lambda: len(brain.history) == 4, 10), brain.history
                assert brain.history[2:] == [
                    {"role": "user", "content": "What is my name?"},
                    {"role": "assistant", "content": answer},
                ]
                assert session.continuation()["memory"] == brain.history
                await asyncio.sleep(0.2)
                fake.drop_after = len(fake.delta_times) + 2  # the next reply breaks off
                since = len(fake.events)
                session.converse("Again?")
                assert await wait_for(lambda: "reopened" in session.notice, 10), session.notice
                assert "conversation goes on" in session.notice
                reopened = since + next(
                    i for i, e in enumerate(fake.events[since:]) if e["type"] == "session.update"
                )
                # (the reply cut off by the drop is not remembered: nobody heard it whole)
                assert brain.history[-1]["content"] == "Again?" and len(brain.history) == 5
                assert await wait_for(lambda: told(reopened) == brain.history, 5), fake.events
                assert fake.errors == []  # every item in the service's own shapes
            finally:
                await session.close()

        asyncio.run(main())


def test_service_gone_is_a_clear_end_and_the_session_lives(default_avatar) -> None:
    fake = FakeRealtime(espeak_pcm(LONG, 24_000), transcript=LONG, speed=2.0, drop_after=4)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert connected
        fake.refuse = True  # from now on every connection is turned away
        session.converse("Talk to me.")
        assert await wait_for(lambda: "could not be reopened" in session.notice, 15)
        assert "HTTP 403" in session.notice and session.mode == "repeat"
        assert await wait_for(lambda: not session.is_speaking, 10)
        before = timeline.speaking()
        session.converse("Hello again.")  # repeated now
        assert await wait_for(lambda: timeline.speaking() > before + 5, 10)

    run_realtime(default_avatar, fake, scenario, reconnects=2)


def test_unreachable_service_is_told_at_start(default_avatar) -> None:
    fake = FakeRealtime(np.zeros(2400, np.int16), refuse=True)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        assert not connected
        assert "refused us: HTTP 403" in session.notice and session.mode == "repeat"
        session.converse("Anyone there?")
        assert await wait_for(lambda: timeline.speaking() > 5, 10)

    run_realtime(default_avatar, fake, scenario)


def test_realtime_settings_come_from_yaml_then_environment(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from rtlipsync.config import load_settings
    from rtlipsync.errors import InputError

    for name in ("RTLIPSYNC_REALTIME_URL", "RTLIPSYNC_REALTIME_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().realtime is None
    path = tmp_path / "settings.yaml"
    path.write_text(
        "realtime: {url: 'wss://yaml.example/v1/realtime', voice: cedar, silence_ms: '300'}\n"
    )
    monkeypatch.setenv("RTLIPSYNC_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime")
    monkeypatch.setenv("RTLIPSYNC_REALTIME_MODEL", "local-model")
    config = load_settings(path).realtime
    assert isinstance(config, RealtimeConfig)
    # The environment overrides the file, key by key; what it does not name stays the file's.
    assert config.endpoint() == "ws://127.0.0.1:9/v1/realtime?model=local-model"
    assert (config.voice, config.silence_ms) == ("cedar", 300)
    monkeypatch.setenv("RTLIPSYNC_REALTIME_URL", "http://example.org")
    with pytest.raises(InputError, match="ws://"):
        load_settings()
    monkeypatch.delenv("RTLIPSYNC_REALTIME_URL")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_settings().realtime.api_key == "sk-test"  # the generic key names the service


def test_realtime_session_over_the_server(default_avatar) -> None:
    """A /ws session in realtime mode: typed text is answered by the service, the persona
    reaches it, and leaving realtime mode closes its socket."""
    import json

    import httpx
    import websockets

    from rtlipsync.server import ServerConfig
    from rtlipsync.transport.websocket import decode_frame

    from conftest import serving

    reply = espeak_pcm("Hello from the service.", 24_000)
    fake = FakeRealtime(reply, transcript="Hello from the service.")

    async def scenario(base: str) -> None:
        url = base.replace("http://", "ws://") + "/ws?mode=realtime"
        async with websockets.connect(url) as ws, httpx.AsyncClient(base_url=base) as http:
            hello = json.loads(await ws.recv())
            assert hello["mode"] == "realtime" and hello["notice"] == ""
            sid = hello["sessionid"]
            await ws.send(json.dumps({"type": "persona", "text": "You are a pirate."}))
            await ws.send(json.dumps({"type": "chat", "text": "Hi!"}))
            loud, caption = 0, ""
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not (loud > 10 and caption):
                message = await ws.recv()
                if isinstance(message, bytes):
                    _, _, audio = decode_frame(message)
                    loud += np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300
                elif json.loads(message).get("caption"):
                    caption = json.loads(message)["caption"]
            assert loud > 10 and caption.startswith("Hello from")
            updates = fake.of_type("session.update")
            assert updates[-1]["session"]["instructions"] == "You are a pirate."
            assert (
                fake.of_type("conversation.item.create")[0]["item"]["content"][0]["text"] == "Hi!"
            )
            state = (await http.get(f"/sessions/{sid}")).json()
            assert state["mode"] == "realtime" and state["persona"] == "You are a pirate."
            r = await http.post("/mode", json={"sessionid": sid, "mode": "repeat"})
            assert r.json()["mode"] == "repeat"
            r = await http.post("/mode", json={"sessionid": sid, "mode": "dance"})
            assert r.status_code == 400 and "mode must be one of" in r.json()["msg"]
            r = await http.post("/persona", json={"sessionid": sid, "text": "x" * 5000})
            assert r.status_code == 400 and "limit" in r.json()["msg"]

    with serving_app(fake.app()) as fake_base:
        realtime = RealtimeConfig(url=fake_base.replace("http://", "ws://") + "/v1/realtime")
        with serving(ServerConfig(realtime=realtime)) as base:
            asyncio.run(scenario(base))


def test_the_transcript_gives_the_reply_its_expression(default_avatar) -> None:
    from rtlipsync.speech.sentences import estimate_emotion

    assert estimate_emotion("Wonderful, I am so glad you asked!") == "happy"
    assert estimate_emotion("I am sorry, that is a difficult problem.") == "concerned"
    assert estimate_emotion("The station is two streets away.") is None
    assert estimate_emotion("太好了，我很高兴。") == "happy"
    text = "Wonderful, I am so glad you asked!"
    fake = FakeRealtime(espeak_pcm(text, 24_000), transcript=text)

    async def scenario(session: Session, timeline: Timeline, connected: bool) -> None:
        session.converse("Can I ask you something?")
        assert await wait_for(lambda: timeline.speaking() > 10, 5)
        assert await wait_for(lambda: not session.is_speaking, 10)
        smiles = [m for (_, s, _), m in zip(timeline.frames, timeline.smiles, strict=True) if s]
        assert max(smiles) > 0.5  # a smile, from the words of the reply

    run_realtime(default_avatar, fake, scenario)


def test_a_failed_offer_closes_its_service_socket(default_avatar) -> None:
    """A realtime session opens its socket to the service before the offer is negotiated;
    an offer that then fails left the socket open (5 bad offers: 5 sockets, 0 sessions)."""
    import httpx

    from rtlipsync.server import ServerConfig

    from conftest import serving

    fake = FakeRealtime(espeak_pcm("Hello.", 24_000))
    bad_sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"  # looks like SDP, cannot negotiate
    with serving_app(fake.app()) as service:
        url = service.replace("http://", "ws://") + "/v1/realtime"
        config = ServerConfig(realtime=RealtimeConfig(url=url, api_key="k"), mode="realtime")
        with serving(config) as base, httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(5):
                r = http.post("/offer", json={"sdp": bad_sdp, "type": "offer"})
                assert r.status_code == 400 and "cannot negotiate" in r.json()["msg"], r.text
            assert len(fake.handshakes) == 5  # each did open one
            assert asyncio.run(wait_for(lambda: fake.open_sockets == 0, 5)), fake.open_sockets


def test_verbose_logs_keep_the_api_key_out(default_avatar, capsys) -> None:  # noqa: ANN001
    """With -v the handshake's headers are logged (websockets does at debug level): the key
    in its Authorization header must not be."""
    import logging

    from rtlipsync.logs import configure_logging

    key = "sk-test-0123456789abcdef"
    fake = FakeRealtime(espeak_pcm("Hello.", 24_000))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(verbose=True)
    try:
        with serving_app(fake.app()) as base:
            url = base.replace("http://", "ws://") + "/v1/realtime"

            async def main() -> None:
                session = Session(default_avatar)
                session.realtime = RealtimeBrain(session, RealtimeConfig(url=url, api_key=key))
                assert await session.realtime.start()
                await session.close()

            asyncio.run(main())
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert fake.handshakes[0]["authorization"] == f"Bearer {key}"  # it was sent
    assert "Authorization: [redacted]" in logged  # and logged, without its value
    assert key not in logged and "0123456789abcdef" not in logged
