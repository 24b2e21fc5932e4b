"""WebSocket out: for networks where WebRTC's UDP is blocked.

One socket carries everything on the session's one clock. Each 40 ms frame is one binary
message, so picture and sound can never drift apart:

    byte 0      1 (a frame)
    bytes 1-4   frame index, uint32 big-endian
    bytes 5-8   JPEG length n, uint32 big-endian
    9 .. 9+n    the frame as JPEG
    the rest    its 40 ms of audio: 640 samples of 16 kHz mono int16, little-endian

Binary messages from the client are its microphone: raw 16 kHz mono int16 little-endian
PCM, any length (20-100 ms is usual), which the session hears exactly as it hears a WebRTC
microphone (barge-in, turns).

Text messages are JSON. Client to server: ``{"type": "say", "text": ..., "interrupt": bool}``,
``{"type": "chat", "text": ...}``, ``{"type": "persona", "text": ...}``,
``{"type": "memory", "messages": [{"role": "user" | "assistant", "content": ...}, ...]}`` (the
conversation so far, to continue one held elsewhere), ``{"type": "interrupt"}``,
``{"type": "close"}``. Server to client: ``{"type": "session", ...}``
first, ``{"type": "state", "speaking": bool, "caption": str, "frame": int}`` right after the
frame that changed either (`StateMessages`), and
``{"type": "error", "msg": ...}`` for a bad message (the session carries on; one that refuses
the session has a ``status``, as HTTP would, and the socket closes). Behind a cluster's
gateway, ``{"type": "reconnect", ...}`` says the worker hosting the session stopped: open
``/ws?resume=ID&secret=SECRET`` to go on with the same avatar and conversation.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtlipsync.errors import InputError
from rtlipsync.media.frames import AVFrame, StateMessages
from rtlipsync.session import MIC_QUIET

if TYPE_CHECKING:
    from rtlipsync.session import Session

FRAME_MESSAGE = 1
HEADER = struct.Struct(">BII")


def encode_frame(frame: AVFrame, quality: int = 80) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    audio = np.ascontiguousarray(frame.audio, dtype="<i2").tobytes()
    return HEADER.pack(FRAME_MESSAGE, frame.index, len(jpeg)) + jpeg.tobytes() + audio


def decode_frame(message: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """(index, BGR image, int16 audio) from a frame message; for clients and tests."""
    kind, index, n = HEADER.unpack_from(message)
    if kind != FRAME_MESSAGE:
        raise ValueError(f"not a frame message (kind {kind})")
    start = HEADER.size
    image = cv2.imdecode(np.frombuffer(message[start : start + n], np.uint8), cv2.IMREAD_COLOR)
    audio = np.frombuffer(message[start + n :], dtype="<i2")
    return index, image, audio


class WebSocketSink:
    """Queues frames for one WebSocket client (a `FrameSink`); a slow client loses the oldest."""

    def __init__(self, maxlen: int = 5) -> None:
        self._frames: deque[AVFrame] = deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, frame: AVFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    def flush(self) -> None:
        self._frames.clear()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self) -> AVFrame | None:
        """The next frame to send, or None once closed."""
        while not self._frames and not self._closed:
            self._ready.clear()
            await self._ready.wait()
        return None if self._closed else self._frames.popleft()


MAX_MIC_BYTES = 32_000  # one second of microphone audio per message at most


def decode_microphone(data: bytes) -> np.ndarray:
    """A client's binary message as 16 kHz int16 samples; ValueError says what is wrong."""
    if len(data) % 2 or len(data) > MAX_MIC_BYTES:
        raise ValueError(
            "binary messages are microphone audio: 16 kHz mono int16 PCM, an even number "
            f"of bytes up to {MAX_MIC_BYTES} (got {len(data)})"
        )
    return np.frombuffer(data, "<i2").astype(np.int16)


class ClientStalled(Exception):
    """A WebSocket client stopped reading: its session is ended, not left holding a place."""


async def send_frames(ws: WebSocket, session: Session, sink: WebSocketSink, timeout: float) -> None:
    """Send the session's frames as they come, each followed by the state it changed; raise
    `ClientStalled` when one send waits ``timeout`` s."""
    state = StateMessages(lambda: session.caption)
    while (frame := await sink.next()) is not None:
        message = await asyncio.to_thread(encode_frame, frame)
        try:
            # The sink drops frames a slow client cannot take, so a send that waits this
            # long means the client stopped reading (it kept its place indefinitely).
            await asyncio.wait_for(ws.send_bytes(message), timeout)
        except TimeoutError:
            raise ClientStalled(f"the client read nothing for {timeout:g} s") from None
        changed = state.after(frame)
        if changed is not None:
            await ws.send_json(changed)


async def receive(
    ws: WebSocket, session: Session, on_text: Callable[[str], Awaitable[None]]
) -> None:
    """Read the client's messages until it goes (`WebSocketDisconnect`): binary ones are its
    microphone, heard by the session; text ones go to ``on_text``, and an `InputError` it
    raises is answered with an error message while the session carries on."""
    while True:
        try:  # (a receive is safe to cancel: no message is lost)
            message = await asyncio.wait_for(ws.receive(), MIC_QUIET)
        except TimeoutError:
            if session.listening:  # the page turned its microphone off
                session.microphone_stopped()
            continue
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        try:
            if text is None:
                try:
                    audio = decode_microphone(message.get("bytes") or b"")
                except ValueError as exc:
                    raise InputError(str(exc)) from exc
                session.listening = True
                session.listen(audio)
            else:
                await on_text(text)
        except InputError as exc:
            await ws.send_json({"type": "error", "msg": str(exc)})
