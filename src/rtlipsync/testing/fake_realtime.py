"""A local server speaking OpenAI's Realtime protocol (GA event names) over a WebSocket.

It behaves like the service where it matters to us: it acknowledges ``session.update``, runs
a server VAD on the appended audio (a plain energy gate, so a cough triggers it as it would
the real one), answers ``response.create`` with recorded speech streamed faster than real
time in base64 24 kHz PCM deltas with transcript deltas, keeps sending a few deltas after a
``response.cancel`` (a real cancel is not instant), and checks ``conversation.item.truncate``
against the audio it actually sent. Every client event is kept for the test to inspect.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

RATE = 24_000
BLOCK = RATE // 50  # 20 ms


@dataclass
class FakeRealtime:
    reply: np.ndarray  # 24 kHz int16 speech every response says
    transcript: str = "Hello from the realtime fake."
    speed: float = 4.0  # deltas are sent this many times faster than real time
    delta_ms: int = 100
    late_deltas: int = 2  # deltas still sent after response.cancel
    drop_after: int | None = None  # close the socket once after this many deltas
    refuse: bool = False  # turn new connections away (HTTP 403)
    speech_rms: float = 600.0  # the energy gate of the fake's VAD
    events: list[dict[str, Any]] = field(default_factory=list)
    handshakes: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # the errors it sent
    heard: str = ""  # what it transcribes the user's speech as (when asked to transcribe)
    transcription_delay: float = 0.6  # s after the speech ended
    _later: set[asyncio.Future[None]] = field(default_factory=set)
    sent_audio_ms: dict[str, int] = field(default_factory=dict)  # per assistant item
    delta_times: list[float] = field(default_factory=list)  # loop time of each delta sent
    open_sockets: int = 0  # clients connected now
    _ids: Any = field(default_factory=itertools.count)

    def app(self) -> Starlette:
        return Starlette(routes=[WebSocketRoute("/v1/realtime", self._serve)])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    async def _serve(self, ws: WebSocket) -> None:
        self.handshakes.append(
            {"authorization": ws.headers.get("authorization", ""), **dict(ws.query_params)}
        )
        if self.refuse:
            await ws.close(code=1008)  # before accept: the handshake fails with HTTP 403
            return
        await ws.accept()
        self.open_sockets += 1
        lock = asyncio.Lock()
        state: dict[str, Any] = {"config": {}, "response": None, "task": None, "ws": ws}
        vad = {"speaking": False, "quiet": 0, "ms": 0, "item": None, "start": 0}

        async def send(event: dict[str, Any]) -> None:
            event.setdefault("event_id", self._id("event"))
            if event["type"] == "error":
                self.errors.append(event["error"])
            async with lock:
                await ws.send_text(json.dumps(event))

        await send({"type": "session.created", "session": {"type": "realtime"}})
        try:
            while True:
                event = json.loads(await ws.receive_text())
                self.events.append(event)
                await self._on_event(event, send, state, vad)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.open_sockets -= 1
            if state["task"] is not None:
                state["task"].cancel()

    async def _on_event(self, event, send, state, vad) -> None:  # noqa: ANN001
        kind = event.get("type")
        if kind == "session.update":
            state["config"].update(event["session"])
            if "audio" in event["session"]:  # (a new persona alone leaves it as it was)
                vad["transcribe"] = bool(event["session"]["audio"]["input"].get("transcription"))
            await send({"type": "session.updated", "session": state["config"]})
        elif kind == "input_audio_buffer.append":
            await self._vad(np.frombuffer(base64.b64decode(event["audio"]), "<i2"), send, vad)
        elif kind == "conversation.item.create":
            # As the service does: a user says input_text (or audio), an assistant output_text.
            allowed = {"user": {"input_text", "input_audio"}, "assistant": {"output_text"}}
            item = {**event["item"], "id": self._id("item")}
            kinds = {c.get("type") for c in item.get("content", [])}
            if not kinds or not kinds <= allowed.get(item.get("role"), set()):
                await send(_error("invalid_value", f"content {kinds} for {item.get('role')}"))
                return
            await send({"type": "conversation.item.added", "item": item})
        elif kind == "conversation.item.delete":
            await send({"type": "conversation.item.deleted", "item_id": event["item_id"]})
        elif kind == "response.create":
            if state["response"] is not None:
                await send(_error("conversation_already_has_active_response", "busy"))
                return
            response = state["response"] = {"id": self._id("resp"), "cancelled": False}
            state["task"] = asyncio.ensure_future(self._respond(response, send, state))
        elif kind == "response.cancel":
            if state["response"] is None:
                await send(_error("response_cancel_not_active", "no active response"))
            else:
                state["response"]["cancelled"] = True
        elif kind == "conversation.item.truncate":
            sent = self.sent_audio_ms.get(event["item_id"])
            if sent is None or event["audio_end_ms"] > sent:
                await send(_error("invalid_value", "audio_end_ms beyond the audio"))
            else:
                await send({"type": "conversation.item.truncated", **event})

    async def _vad(self, pcm: np.ndarray, send, vad) -> None:  # noqa: ANN001
        silence_ms = 500
        pcm = np.concatenate([vad.pop("carry", np.zeros(0, np.int16)), pcm])
        whole = len(pcm) // BLOCK * BLOCK
        vad["carry"] = pcm[whole:]  # appends need not be whole blocks: nothing is skipped
        for i in range(0, whole, BLOCK):
            block = pcm[i : i + BLOCK].astype(np.float64)
            loud = np.sqrt(np.mean(block**2)) > self.speech_rms
            vad["ms"] += 20
            if loud and not vad["speaking"]:
                vad.update(speaking=True, quiet=0, item=self._id("item"), start=vad["ms"])
                await send({
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": max(0, vad["ms"] - 300),
                    "item_id": vad["item"],
                })  # fmt: skip
            elif vad["speaking"]:
                vad["quiet"] = 0 if loud else vad["quiet"] + 20
                if vad["quiet"] >= silence_ms:
                    vad["speaking"] = False
                    item = vad["item"]
                    await send({
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": vad["ms"],
                        "item_id": item,
                    })  # fmt: skip
                    await send({"type": "input_audio_buffer.committed", "item_id": item})
                    await send({
                        "type": "conversation.item.added",
                        "item": {"id": item, "type": "message", "role": "user"},
                    })  # fmt: skip
                    if vad.get("transcribe"):  # (it comes a while later, as the service's)
                        later = asyncio.ensure_future(self._transcribed(item, send))
                        self._later.add(later)
                        later.add_done_callback(self._later.discard)

    async def _transcribed(self, item: str, send) -> None:  # noqa: ANN001
        await asyncio.sleep(self.transcription_delay)
        await send({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item,
            "content_index": 0,
            "transcript": self.heard,
        })  # fmt: skip

    async def _respond(self, response, send, state) -> None:  # noqa: ANN001
        rid = response["id"]
        item = self._id("item")
        common = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        await send({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
        await send({
            "type": "response.output_item.added",
            "response_id": rid,
            "item": {"id": item, "type": "message", "role": "assistant"},
        })  # fmt: skip
        step = RATE * self.delta_ms // 1000
        words = self.transcript.split(" ")
        chunks = [self.reply[i : i + step] for i in range(0, len(self.reply), step)]
        self.sent_audio_ms[item] = 0
        late = self.late_deltas
        loop = asyncio.get_running_loop()
        for n, chunk in enumerate(chunks):
            if response["cancelled"]:
                if late == 0:
                    break
                late -= 1
            if self.drop_after is not None and len(self.delta_times) >= self.drop_after:
                self.drop_after = None  # once: the reconnection is served normally
                state["response"] = None
                await state["ws"].close(code=1011)
                return
            if n < len(words):
                delta = words[n] + (" " if n < len(words) - 1 else "")
                await send(
                    {"type": "response.output_audio_transcript.delta", **common, "delta": delta}
                )
            payload = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
            await send({"type": "response.output_audio.delta", **common, "delta": payload})
            self.sent_audio_ms[item] += len(chunk) * 1000 // RATE
            self.delta_times.append(loop.time())
            await asyncio.sleep(self.delta_ms / 1000 / self.speed)
        status = "cancelled" if response["cancelled"] else "completed"
        if status == "completed":
            await send({"type": "response.output_audio.done", **common})
            await send(
                {
                    "type": "response.output_audio_transcript.done",
                    **common,
                    "transcript": self.transcript,
                }
            )
        state["response"] = None
        await send({"type": "response.done", "response": {"id": rid, "status": status}})


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": code, "message": message},
    }
