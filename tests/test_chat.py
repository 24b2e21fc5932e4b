"""Chat mode over the real OpenAI protocol (official client, local fake server)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from rtlipsync.server import ServerConfig
from rtlipsync.session import Session
from rtlipsync.speech.chat import ChatBrain
from rtlipsync.speech.llm import ChatLLM, LLMConfig
from rtlipsync.speech.sentences import SentenceSplitter, split_emotion
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply

from conftest import free_port, serving, serving_app, wait_for


def test_sentences_and_emotion_tags() -> None:
    s = SentenceSplitter()
    out = []
    for piece in [
        "[happy] Hi. It is ",
        "great to see you! How are",
        " you today? 我很好。你呢？",
        " Bye",
    ]:
        out += s.feed(piece)
    out += s.flush()
    assert out == [
        "[happy] Hi. It is great to see you!",
        "How are you today?",
        "我很好。你呢？",
        "Bye",
    ]
    assert split_emotion("[Concerned] Oh no.") == ("concerned", "Oh no.")
    assert split_emotion("No tag.") == (None, "No tag.")


def run_chat(default_avatar, base: str, scenario, **llm) -> None:  # noqa: ANN001
    async def main() -> None:
        config = LLMConfig(base_url=f"{base}/v1", api_key="test-key", model="fake-model", **llm)
        client = ChatLLM(config)
        session = Session(default_avatar)
        session.chat = ChatBrain(client)
        frames = []
        session.on_frame = frames.append
        session.start()
        try:
            await scenario(session, frames)
        finally:
            await session.close()
            await client.close()

    asyncio.run(main())


def test_chat_turn_speaks_sentence_by_sentence(default_avatar) -> None:
    fake = FakeOpenAI([
        Reply(["[happy] Hello", " there, it is", " good to see you. ", "This second sentence",
               " comes much later."], pause_after=2, pause=2.0),
        Reply(["[neutral] You said hi before."]),
    ])  # fmt: skip

    async def scenario(session: Session, frames: list) -> None:
        t0 = time.monotonic()
        session.converse("Hi there!")
        assert await wait_for(lambda: session.speaking, 5)
        started = time.monotonic()
        assert session.caption == "Hello there, it is good to see you."  # no tag spoken
        assert await wait_for(lambda: bool(fake.finished), 5)
        assert started < fake.finished[0] - 1.0, "speech waited for the whole reply"
        assert started - t0 < 1.0
        assert await wait_for(lambda: session.caption.startswith("This second"), 5)
        assert any(f.mouth.get("smile", 0) > 0.5 for f in frames if f.speaking)  # [happy]
        assert await wait_for(lambda: not session.is_speaking, 15)
        session.converse("Remember me?")
        assert await wait_for(lambda: len(fake.requests) == 2, 5)
        await asyncio.sleep(0.3)

    with serving_app(fake.app()) as base:
        run_chat(default_avatar, base, scenario)
    first, second = fake.requests
    assert first["stream"] is True and first["model"] == "fake-model"
    assert first["messages"][0]["role"] == "system" and "[happy]" in first["messages"][0]["content"]
    assert first["messages"][-1] == {"role": "user", "content": "Hi there!"}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"].startswith("Hello there, it is good to see you.")


def test_memory_is_bounded(default_avatar) -> None:
    fake = FakeOpenAI([Reply([f"[neutral] Answer number {i}."]) for i in range(5)])

    async def scenario(session: Session, frames: list) -> None:
        for i in range(5):
            session.converse(f"Question {i}?")
            assert await wait_for(lambda i=i: len(fake.requests) == i + 1, 5)
            assert await wait_for(lambda: not session._say_tasks, 5)

    with serving_app(fake.app()) as base:
        run_chat(default_avatar, base, scenario, max_turns=2)
    assert len(fake.requests[-1]["messages"]) == 1 + 4 + 1  # system, two turns, the question


def test_failures_leave_the_session_alive_and_idle(default_avatar) -> None:
    fake = FakeOpenAI([
        Reply(["[neutral] This first sentence is spoken. ", "Then the line", " goes dead."],
              drop_after=1),
        Reply([], status=500),
        Reply(["[neutral] Too late."], first_delay=3.0),
    ])  # fmt: skip

    async def scenario(session: Session, frames: list) -> None:
        session.converse("Tell me something.")
        assert await wait_for(lambda: session.caption == "This first sentence is spoken.", 5)
        assert await wait_for(lambda: "broke off" in session.notice, 5), session.notice
        session.converse("Again?")
        assert await wait_for(lambda: "HTTP 500" in session.notice, 5)
        session.converse("Slowly?")
        assert await wait_for(lambda: "too long" in session.notice, 5)
        assert await wait_for(lambda: not session.is_speaking, 10)
        assert session.running

    with serving_app(fake.app()) as base:
        run_chat(default_avatar, base, scenario, timeout=1.0)


def test_llm_down(default_avatar) -> None:
    async def scenario(session: Session, frames: list) -> None:
        session.converse("Anyone there?")
        assert await wait_for(lambda: "unreachable" in session.notice, 5), session.notice
        assert await wait_for(lambda: not session.is_speaking, 5)
        assert session.running

    run_chat(default_avatar, f"http://127.0.0.1:{free_port()}", scenario)


def test_interrupt_cancels_the_reply(default_avatar) -> None:
    fake = FakeOpenAI([Reply(["[neutral] A first sentence to speak. ", "And then a lot more."],
                             pause_after=0, pause=3.0)])  # fmt: skip

    async def scenario(session: Session, frames: list) -> None:
        session.converse("Talk to me.")
        assert await wait_for(lambda: session.speaking, 5)
        session.interrupt()
        await asyncio.sleep(0.5)
        assert not session.speaking and not session._say_tasks  # the LLM stream is cancelled
        await asyncio.sleep(3.0)  # the rest of the reply never plays
        assert not any(f.speaking for f in frames[-50:])
        assert session.chat.history[-1]["content"] == "A first sentence to speak."

    with serving_app(fake.app()) as base:
        run_chat(default_avatar, base, scenario)


def test_chat_over_http_and_without_an_llm(default_avatar) -> None:
    fake = FakeOpenAI([Reply(["[happy] Nice to meet you, friend."])])

    async def converse(base: str, sid_holder: list) -> dict:
        from test_server import Peer

        peer = Peer()
        answer = await peer.connect(base)
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.post(
                "/human", json={"sessionid": answer["sessionid"], "text": "Hello!", "type": "chat"}
            )
            assert r.json()["code"] == 0
            assert await wait_for(lambda: any(a[2] > 500 for a in peer.audio), 5)
            state = (await http.get(f"/sessions/{answer['sessionid']}")).json()
            state["metrics"] = (await http.get("/metrics")).text
        await peer.close()
        return state

    with serving_app(fake.app()) as llm_base:
        with serving(ServerConfig(llm=LLMConfig(base_url=f"{llm_base}/v1", api_key="k"))) as base:
            state = asyncio.run(converse(base, []))
    assert state["chat"] is True and state["notice"] == ""
    assert state["caption"] == "Nice to meet you, friend."
    turn = state["last_turn"]  # request -> first token -> first audio -> first frame
    assert 0 < turn["llm_first_token"] <= turn["tts_first_audio"] <= turn["first_frame"] < 2000
    metrics = state["metrics"]
    assert 'rtlipsync_turn_first_frame_seconds_count{mode="chat"} 1.0' in metrics
    assert "rtlipsync_llm_first_token_seconds_count 1.0" in metrics
    assert "rtlipsync_tts_first_audio_seconds_count 1.0" in metrics
    assert "rtlipsync_sessions 1.0" in metrics
    with serving() as base:  # no LLM configured: chat says so and repeats
        state = asyncio.run(converse(base, []))
    assert state["chat"] is False and "No language model" in state["notice"]
    assert state["caption"] == "Hello!"
    assert 'rtlipsync_turn_first_frame_seconds_count{mode="repeat"} 1.0' in state["metrics"]


def test_replies_in_chinese_and_japanese_get_their_voices(default_avatar) -> None:
    from rtlipsync.speech.espeak import EspeakTTS
    from rtlipsync.speech.sentences import language_of

    assert [language_of(t) for t in ("Hello.", "你好。", "こんにちは。", "東京へようこそ。")] == [
        "en", "zh", "ja", "ja",
    ]  # fmt: skip

    class Voices(EspeakTTS):  # the real voice, noting which voice each sentence asked for
        asked: list = []

        def synthesize(self, text, voice=None):  # noqa: ANN001, ANN201
            Voices.asked.append((text, voice))
            return super().synthesize(text, voice)

    fake = FakeOpenAI(
        [Reply(["[happy] 你好，很高兴见到你。", "こんにちは、元気ですか。", "And in English."])]
    )

    async def scenario(base: str) -> None:
        client = ChatLLM(LLMConfig(base_url=f"{base}/v1", api_key="k"))
        session = Session(default_avatar, tts=Voices())
        session.chat = ChatBrain(client)
        session.start()
        session.converse("Say hello in three languages.")
        assert await wait_for(lambda: len(Voices.asked) == 3, 10)
        await session.close()
        await client.close()

    with serving_app(fake.app()) as base:
        asyncio.run(scenario(base))
    assert [voice for _, voice in Voices.asked] == ["zh", "ja", None]


class Listener:
    """A `Conversation` that only writes down what a brain asks of it: no session, engine or
    voice behind it. That a brain runs against it shows it needs nothing more."""

    def __init__(self, heard_up_to: int | None = None) -> None:
        self.id, self.mode, self.notice, self.heard = 7, "chat", "", ""
        self.said: list[tuple[str, str | None]] = []
        self.marks: list[str] = []
        self.heard_up_to = heard_up_to  # the user cuts in after this many sentences

    queued_samples = played_samples = 0

    def begin_turn(self, mode: str, started: float | None = None) -> None: ...

    def mark(self, name: str) -> None:
        self.marks.append(name)

    def set_notice(self, text: str) -> None:
        self.notice = text

    def interrupt(self) -> int:
        return 0

    async def speak(self, text: str, voice, emotion, generation) -> bool:  # noqa: ANN001
        if self.heard_up_to is not None and len(self.said) >= self.heard_up_to:
            return False  # an interruption came first
        self.said.append((text, emotion))
        return True

    def push_stream(self, pcm, end=False, emotion=None, text=None) -> None: ...  # noqa: ANN001

    def caption_from(self, sample: int, text: str) -> None: ...


def test_the_chat_brain_needs_only_its_narrow_port() -> None:
    """Brains used to read and write the session from behind; the chat brain now runs
    against a bare `Conversation`, and remembers only what was heard before a cut."""
    fake = FakeOpenAI([
        Reply(["[happy] The first sentence is here. ", "The second one follows it."]),
        Reply(["[sad] A fourth sentence comes now. The fifth is never heard."]),
    ])  # fmt: skip

    async def main(base: str) -> tuple[Listener, Listener, ChatBrain]:
        client = ChatLLM(LLMConfig(base_url=f"{base}/v1", api_key="k", model="m"))
        brain = ChatBrain(client)
        whole, cut = Listener(), Listener(heard_up_to=1)
        await brain.reply(whole, "Count to three.", generation=0)
        with contextlib.suppress(asyncio.CancelledError):  # (how a cut reply ends)
            await brain.reply(cut, "And on?", generation=0)
        await client.close()
        return whole, cut, brain

    with serving_app(fake.app()) as base:
        whole, cut, brain = asyncio.run(main(base))
    assert whole.said == [
        ("The first sentence is here.", "happy"),
        ("The second one follows it.", "happy"),
    ]
    assert "llm_first_token" in whole.marks
    assert cut.said == [("A fourth sentence comes now.", "sad")]  # cut in after one
    assert brain.history[-1]["content"] == "A fourth sentence comes now."  # what was heard
