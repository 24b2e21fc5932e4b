"""A local server that speaks OpenAI's HTTP protocol: chat completions (streamed SSE),
``/v1/audio/transcriptions`` and ``/v1/audio/speech`` (raw 24 kHz PCM, streamed).

It answers exactly as the API does (``chat.completion.chunk`` objects, then ``data: [DONE]``;
chunked PCM bytes), so the official ``openai`` client talks to it unchanged. A test scripts
each reply: its text pieces, a pause after one of them, a dropped connection, an HTTP error,
or a slow start; and the speech it says, how fast it streams, or that it fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


@dataclass
class Reply:
    pieces: list[str]
    pause_after: int | None = None  # index of the piece after which to wait
    pause: float = 0.0
    drop_after: int | None = None  # close the connection after this many pieces
    status: int = 200
    first_delay: float = 0.0


@dataclass
class FakeOpenAI:
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # when each stream ended
    transcript: str = "hello there"
    uploads: list[dict] = field(default_factory=list)  # what /v1/audio/transcriptions got
    speech: np.ndarray | None = None  # 24 kHz int16 audio /v1/audio/speech answers with
    speech_speed: float = 4.0  # streamed this many times faster than real time
    speech_status: int = 200
    speech_requests: list[dict] = field(default_factory=list)
    speech_finished: list[float] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
                Route("/v1/audio/speech", self._speak, methods=["POST"]),
            ]
        )

    async def _transcribe(self, request: Request):  # noqa: ANN202
        form = await request.form()
        upload = form["file"]
        self.uploads.append(
            {"model": form.get("model"), "name": upload.filename, "bytes": await upload.read()}
        )
        return JSONResponse({"text": self.transcript})

    async def _speak(self, request: Request):  # noqa: ANN202
        body = await request.json()
        self.speech_requests.append(body)
        if self.speech_status != 200:
            error = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
            return JSONResponse(error, status_code=self.speech_status)
        if body.get("response_format") != "pcm" or self.speech is None:
            return JSONResponse({"error": {"message": "this fake speaks pcm only"}}, 400)
        pcm = self.speech.astype("<i2").tobytes()
        step = 4800  # 100 ms of 24 kHz int16

        async def chunks():  # noqa: ANN202
            for i in range(0, len(pcm), step):
                yield pcm[i : i + step]
                await asyncio.sleep(0.1 / self.speech_speed)
            self.speech_finished.append(time.monotonic())

        return StreamingResponse(chunks(), media_type="audio/pcm")

    async def _complete(self, request: Request):  # noqa: ANN202
        body = await request.json()
        self.requests.append(body)
        reply = self.replies.pop(0) if self.replies else Reply(["[neutral] I have nothing to say."])
        if reply.status != 200:
            error = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
            return JSONResponse(error, status_code=reply.status)

        def chunk(content: str | None, finish: str | None = None) -> str:
            delta = {"content": content} if content is not None else {}
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events():  # noqa: ANN202
            await asyncio.sleep(reply.first_delay)
            yield chunk("")  # the API's first chunk opens the message
            for i, piece in enumerate(reply.pieces):
                if reply.drop_after is not None and i == reply.drop_after:
                    raise ConnectionResetError("scripted drop")
                yield chunk(piece)
                if reply.pause_after == i:
                    await asyncio.sleep(reply.pause)
            yield chunk(None, "stop")
            yield "data: [DONE]\n\n"
            self.finished.append(time.monotonic())

        return StreamingResponse(events(), media_type="text/event-stream")
