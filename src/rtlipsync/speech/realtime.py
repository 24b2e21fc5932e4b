"""The realtime brain: a speech-to-speech service speaking OpenAI's Realtime protocol (GA).

The server, not the browser, holds the service's WebSocket: the user's microphone reaches us
over WebRTC anyway, and only the server knows how much of a reply has actually been played.
The protocol is a dozen JSON events, spoken here with a plain ``websockets`` client so that
local stand-ins (LocalAI, speech-to-speech, vLLM-Omni) that still use the beta event names
work too; both name sets are accepted.

- ``session.update`` sets the instructions, the voice, 24 kHz PCM both ways and the server's
  VAD. The server neither answers nor cancels by itself (``create_response`` and
  ``interrupt_response`` off): we decide, because a cough must not cut the avatar off.
- Microphone audio (16 kHz in the session) is resampled to 24 kHz and appended as it comes.
- ``response.output_audio.delta`` chunks go to the lip-sync engine as they arrive, resampled
  to 16 kHz, so the first frame never waits for the whole reply; transcripts become captions.
- Barge-in: ``input_audio_buffer.speech_started`` while the avatar talks, confirmed by the
  local VAD (speech of at least ``min_speech``, so not a cough), stops the avatar within a
  frame, sends ``response.cancel`` and ``conversation.item.truncate`` with ``audio_end_ms``
  equal to the audio actually sent to the user, and drops the cancelled reply's late deltas.
  An unconfirmed start (a cough) is deleted from the conversation and nothing is answered.
- A dropped socket is reopened (the conversation starts afresh, and the user is told); when
  that fails the session carries on in repeat mode with a notice that says why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import numpy as np
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from rtlipsync.speech.sentences import estimate_emotion

if TYPE_CHECKING:
    from rtlipsync.speech.port import Conversation

log = logging.getLogger(__name__)

RATE = 24_000  # the protocol's only PCM rate
REALTIME_PERSONA = (
    "You are a friendly digital human talking with someone face to face. Answer in one to "
    "three short spoken sentences, in the language you are spoken to."
)
# Beta event names some local servers still send, mapped to their GA names.
BETA_NAMES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "conversation.item.created": "conversation.item.added",
}
CONFIRM_WINDOW = 1.0  # s: local speech this recent confirms the server's speech_started


class RealtimeError(Exception):
    """The realtime service could not be reached or refused us; the message says why."""


@dataclass
class RealtimeConfig:
    url: str = "wss://api.openai.com/v1/realtime"
    api_key: str | None = None
    model: str = "gpt-realtime"
    voice: str = "marin"
    instructions: str = REALTIME_PERSONA
    silence_ms: int = 500  # the service's VAD: quiet that ends the user's turn
    prefix_padding_ms: int = 300
    reconnects: int = 3  # attempts after a dropped socket, before giving up
    timeout: float = 10.0  # to connect, and for the answer to session.update
    # A transcription model (e.g. gpt-4o-mini-transcribe) for what the user says: shown as
    # heard, and remembered as text, so a new connection is told the spoken turns too. Off
    # by default: it costs, and not every compatible service knows the model.
    transcription_model: str = ""

    def endpoint(self) -> str:
        joiner = "&" if "?" in self.url else "?"
        return f"{self.url}{joiner}{urlencode({'model': self.model})}"


@dataclass
class _Reply:
    """An assistant audio item being played."""

    item_id: str
    response_id: str | None
    start: int  # the session's speech sample at which it starts
    received: int = 0  # 24 kHz samples received
    ended: bool = False
    resampler: Any = field(default=None, repr=False)


KEPT = 200  # messages of the conversation remembered as text


class RealtimeBrain:
    """One session's conversation with a realtime speech-to-speech service."""

    def __init__(
        self, session: Conversation, config: RealtimeConfig, instructions: str | None = None
    ) -> None:
        self.session = session
        self.config = config
        self.instructions = instructions or config.instructions
        self.connected = False
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = soxr.ResampleStream(16_000, RATE, 1, dtype="int16")
        self._reply: _Reply | None = None
        self._response: str | None = None  # the response in progress
        self._dead: set[str] = set()  # cancelled responses: their late deltas are dropped
        self._transcripts: dict[str, str] = {}
        self._user_item: str | None = None  # speech the service is hearing now
        self._confirmed = False  # ... and the local VAD agrees it is speech
        self._local_speaking = False
        self._local_at = -1e9  # monotonic time the local VAD last heard speech
        self._closing = False
        # The conversation as text (typed and transcribed turns, the replies' transcripts):
        # what a new connection is told, so that neither a dropped socket nor a session
        # continued elsewhere starts it afresh.
        self.history: list[dict[str, str]] = []
        self.turns = 0  # changes to the history: a change a copy of the memory can see
        self._heard_at: int | None = None  # where the turn being transcribed goes in it

    # -- connection -----------------------------------------------------------------------
    async def start(self) -> bool:
        """Connect and configure. A failure is told to the user; the session goes on."""
        try:
            await self._connect()
        except RealtimeError as exc:
            self._give_up(str(exc))
            return False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(), name=f"realtime-read-{self.session.id}"),
            loop.create_task(self._write(), name=f"realtime-write-{self.session.id}"),
        ]
        return True

    async def _connect(self) -> None:
        where = self.config.url
        headers = {"Authorization": f"Bearer {self.config.api_key or 'none'}"}
        try:
            ws = await connect(
                self.config.endpoint(),
                additional_headers=headers,
                open_timeout=self.config.timeout,
                max_size=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            raise RealtimeError(f"the realtime service at {where} refused us: HTTP {code}") from exc
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise RealtimeError(f"the realtime service at {where} is unreachable: {exc}") from exc
        try:
            await ws.send(json.dumps({"type": "session.update", "session": self._session()}))
            await asyncio.wait_for(self._configured(ws), self.config.timeout)
        except (TimeoutError, ConnectionClosed, RealtimeError, ValueError) as exc:
            await ws.close()
            if isinstance(exc, RealtimeError):
                raise
            raise RealtimeError(
                f"the realtime service at {where} did not accept the session"
            ) from exc
        for event in self._replay():  # (the conversation so far, before anything new)
            await ws.send(json.dumps(event))
        self._ws = ws
        self.connected = True
        log.info("realtime session open at %s", where, extra={"session": self.session.id})

    async def _configured(self, ws: ClientConnection) -> None:
        async for message in ws:
            event = json.loads(message)
            if event.get("type") == "session.updated":
                return
            if event.get("type") == "error":
                error = event.get("error") or {}
                raise RealtimeError(
                    f"the realtime service rejected the session: {error.get('message')}"
                )
        raise RealtimeError(f"the realtime service at {self.config.url} closed the connection")

    def _session(self) -> dict[str, Any]:
        pcm = {"type": "audio/pcm", "rate": RATE}
        heard = {"model": self.config.transcription_model}
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": pcm,
                    "turn_detection": {
                        "type": "server_vad",
                        "silence_duration_ms": self.config.silence_ms,
                        "prefix_padding_ms": self.config.prefix_padding_ms,
                        "create_response": False,
                        "interrupt_response": False,
                    },
                    **({"transcription": heard} if self.config.transcription_model else {}),
                },
                "output": {"format": pcm, "voice": self.config.voice},
            },
        }

    def restore(self, history: list[dict[str, str]]) -> None:
        """Continue a conversation held elsewhere (a session whose host stopped): told to
        the service now if connected, else when it connects."""
        self.history = [dict(m) for m in history[-KEPT:]]
        self.turns += 1
        for event in self._replay():
            self._send(event)

    def _replay(self) -> list[dict[str, Any]]:
        kinds = {"user": "input_text", "assistant": "output_text"}
        return [
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": m["role"],
                    "content": [{"type": kinds[m["role"]], "text": m["content"]}],
                },
            }
            for m in self.history
            if m.get("role") in kinds
        ]

    def _remember(self, role: str, text: str, at: int | None = None) -> None:
        text = text.strip()
        if not text:
            return
        message = {"role": role, "content": text}
        if at is None or at > len(self.history):
            self.history.append(message)
        else:
            self.history.insert(at, message)
        del self.history[:-KEPT]
        self.turns += 1

    def set_instructions(self, text: str) -> None:
        """A new persona, from the next reply on."""
        self.instructions = text
        self._send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": text}}
        )

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self.connected = False

    def _give_up(self, why: str) -> None:
        self.connected = False
        self.session.mode = "repeat"
        self.session.set_notice(f"{why}; the avatar now repeats what you type")

    async def _read(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            why = "the service closed it"
            try:
                async for message in ws:
                    try:
                        event = json.loads(message)
                    except ValueError:
                        log.warning(
                            "realtime: not JSON, ignored", extra={"session": self.session.id}
                        )
                        continue
                    self._handle(event)
            except ConnectionClosed as exc:
                why = f"it closed ({exc})"
            except OSError as exc:
                why = str(exc)
            if self._closing:
                return
            self.connected = False
            self._end_reply()
            self._response = None
            log.warning("realtime connection dropped: %s", why, extra={"session": self.session.id})
            self.session.set_notice("The realtime connection dropped; reconnecting")
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        last = ""
        for attempt in range(self.config.reconnects):
            await asyncio.sleep(min(4.0, 0.5 * 2**attempt))
            try:
                await self._connect()
            except RealtimeError as exc:
                last = str(exc)
                continue
            self._up = soxr.ResampleStream(16_000, RATE, 1, dtype="int16")
            self.session.set_notice(
                "The realtime connection dropped and was reopened"
                + ("; the conversation goes on" if self.history else "")
            )
            return True
        self._give_up(f"The realtime connection dropped and could not be reopened ({last})")
        return False

    async def _write(self) -> None:
        while True:
            data = await self._outbox.get()
            ws = self._ws
            if ws is None or not self.connected:
                continue  # while reconnecting, what the user says is lost, not replayed late
            with contextlib.suppress(ConnectionClosed):
                await ws.send(data)

    def _send(self, event: dict[str, Any]) -> None:
        if self.connected:
            self._outbox.put_nowait(json.dumps(event))

    # -- the user -------------------------------------------------------------------------
    def send_audio(self, pcm: np.ndarray) -> None:
        """16 kHz int16 microphone audio, appended at the service's 24 kHz."""
        if not self.connected:
            return
        audio = self._up.resample_chunk(np.asarray(pcm, np.int16))
        if len(audio):
            payload = base64.b64encode(audio.astype("<i2").tobytes()).decode()
            self._send({"type": "input_audio_buffer.append", "audio": payload})

    def send_text(self, text: str) -> None:
        """A typed turn: it interrupts the reply being spoken and is answered at once."""
        self.session.interrupt()
        self.session.notice = ""
        self.session.begin_turn("realtime")
        self._remember("user", text)
        self._send({
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        })  # fmt: skip
        self._send({"type": "response.create"})

    def local_speech(self, started: bool) -> None:
        """The local VAD's verdict: speech of at least its minimum duration began or ended."""
        self._local_speaking = started
        self._local_at = time.monotonic()
        if started and self._user_item is not None:
            self._confirmed = True
            self._barge_in()

    def _local_heard(self) -> bool:
        return self._local_speaking or time.monotonic() - self._local_at < CONFIRM_WINDOW

    def _barge_in(self) -> None:
        if self._reply is not None or self._response is not None:
            log.info("barge-in: the user started speaking", extra={"session": self.session.id})
            self.session.interrupt()  # calls stop_reply

    def stop_reply(self) -> None:
        """Stop the reply being spoken (the session is being interrupted): cancel it at the
        service and cut its item to what the user actually heard."""
        reply, self._reply = self._reply, None
        if self._response is not None:
            self._dead.add(self._response)
            self._send({"type": "response.cancel"})
            self._response = None
        if reply is None:
            return
        if reply.response_id:
            self._dead.add(reply.response_id)
        played = max(0, self.session.played_samples - reply.start)  # 16 kHz samples sent
        received_ms = reply.received * 1000 // RATE
        heard_ms = min(played * 1000 // 16_000, received_ms)
        if reply.ended and heard_ms >= received_ms:
            return  # it was all heard: nothing to cut
        self._send({
            "type": "conversation.item.truncate",
            "item_id": reply.item_id,
            "content_index": 0,
            "audio_end_ms": int(heard_ms),
        })  # fmt: skip
        log.info(
            "reply %s cut at %d ms of %d", reply.item_id, heard_ms, received_ms,
            extra={"session": self.session.id},
        )  # fmt: skip

    # -- the service ----------------------------------------------------------------------
    def _handle(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        kind = BETA_NAMES.get(kind, kind)
        if kind == "response.output_audio.delta":
            self._on_audio(event)
        elif kind == "response.output_audio.done":
            if self._reply is not None and self._reply.item_id == event.get("item_id"):
                self._end_reply()
        elif kind == "response.output_audio_transcript.delta":
            self._on_transcript(event)
        elif kind == "input_audio_buffer.speech_started":
            self._user_item = event.get("item_id") or "?"
            self._confirmed = self._local_heard()
            if self._confirmed:
                self._barge_in()
        elif kind == "input_audio_buffer.speech_stopped":
            self._on_speech_stopped(event)
        elif kind == "response.created":
            response_id = (event.get("response") or {}).get("id")
            if response_id not in self._dead:
                self._response = response_id
        elif kind == "response.done":
            self._on_response_done(event.get("response") or {})
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.session.heard = str(event.get("transcript", "")).strip()
            # (It may come after the reply began: it goes before it in the history.)
            at, self._heard_at = self._heard_at, None
            self._remember("user", self.session.heard, at)
        elif kind == "error":
            self._on_error(event.get("error") or {})

    def _on_speech_stopped(self, event: dict[str, Any]) -> None:
        item, self._user_item = self._user_item, None
        confirmed = self._confirmed or self._local_heard()
        self._confirmed = False
        if not confirmed:
            # A cough or a noise: the service heard "speech", we did not. It is taken out of
            # the conversation, nothing is answered, and the avatar never stopped.
            log.info("not speech (too short): ignored", extra={"session": self.session.id})
            if item and item != "?":
                self._send({"type": "conversation.item.delete", "item_id": item})
            return
        self._barge_in()
        self._heard_at = len(self.history)
        # The service declares the end after silence_ms of quiet: the user stopped that long ago.
        stopped = time.monotonic() - self.config.silence_ms / 1000
        self.session.notice = ""
        self.session.begin_turn("realtime", stopped)
        self._send({"type": "response.create"})

    def _on_audio(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        if response_id in self._dead:
            return  # a late delta of a reply the user cut off
        item_id = str(event.get("item_id", ""))
        reply = self._reply
        if reply is None or reply.item_id != item_id:
            self._end_reply()
            reply = self._reply = _Reply(
                item_id,
                response_id,
                start=self.session.queued_samples,
                resampler=soxr.ResampleStream(RATE, 16_000, 1, dtype="int16"),
            )
            self.session.mark("provider_first_audio")
            if text := self._transcripts.get(item_id):
                self.session.caption_from(reply.start, text)
                # Words that came before the audio: the lips align them as it plays.
                self.session.push_stream(np.zeros(0, np.int16), text=text)
        try:
            pcm = np.frombuffer(base64.b64decode(event.get("delta", "")), "<i2")
        except ValueError:
            log.warning("realtime: undecodable audio delta", extra={"session": self.session.id})
            return
        reply.received += len(pcm)
        # No tag can be taken off spoken audio: the expression comes from the transcript.
        emotion = estimate_emotion(self._transcripts.get(item_id, ""))
        self.session.push_stream(
            reply.resampler.resample_chunk(pcm.astype(np.int16)), emotion=emotion
        )

    def _end_reply(self) -> None:
        reply = self._reply
        if reply is None or reply.ended:
            return
        reply.ended = True
        tail = reply.resampler.resample_chunk(np.zeros(0, np.int16), last=True)
        self.session.push_stream(tail, end=True)

    def _on_transcript(self, event: dict[str, Any]) -> None:
        if event.get("response_id") in self._dead:
            return
        item_id = str(event.get("item_id", ""))
        delta = str(event.get("delta", ""))
        text = self._transcripts.get(item_id, "") + delta
        self._transcripts[item_id] = text
        if self._reply is not None and self._reply.item_id == item_id and not self._reply.ended:
            self.session.caption_from(self._reply.start, text.strip())
            self.session.push_stream(np.zeros(0, np.int16), text=delta)

    def _on_response_done(self, response: dict[str, Any]) -> None:
        if response.get("id") not in self._dead:  # (a reply cut off is not remembered)
            self._remember("assistant", " ".join(t.strip() for t in self._transcripts.values()))
        if response.get("id") == self._response:
            self._response = None
        if self._reply is not None and self._reply.response_id == response.get("id"):
            self._end_reply()
        self._transcripts.clear()
        if response.get("status") == "failed":
            error = (response.get("status_details") or {}).get("error") or {}
            message = error.get("message") or "no reason given"
            self.session.set_notice(f"The realtime service could not answer: {message}")

    def _on_error(self, error: dict[str, Any]) -> None:
        code = str(error.get("code") or "")
        message = str(error.get("message") or "unknown error")
        log.warning("realtime error %s: %s", code, message, extra={"session": self.session.id})
        if code == "response_cancel_not_active" or "truncat" in code:
            return  # a cancel that raced the reply's end: harmless
        self.session.set_notice(f"The realtime service reported an error: {message}")
