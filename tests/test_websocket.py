"""The WebSocket transport over a real socket: frames + PCM on one clock, commands, garbage."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import websockets

from rtlipsync.transport.websocket import decode_frame

from conftest import serving


async def frames_for(ws, seconds: float) -> list[tuple[int, np.ndarray, np.ndarray]]:  # noqa: ANN001
    """Binary frames received for ``seconds`` (JSON messages are skipped)."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(
                ws.recv(), timeout=max(0.01, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            break
        if isinstance(message, bytes):
            out.append(decode_frame(message))
    return out


def loud(audio: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) > 300


def test_websocket_session(default_avatar) -> None:
    async def scenario(base: str) -> None:
        url = base.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "session" and (hello["width"], hello["height"]) == (512, 512)
            sid = hello["sessionid"]
            idle = await frames_for(ws, 2.0)
            assert 44 <= len(idle) <= 56  # 25 fps, paced in real time
            indices = [i for i, _, _ in idle]
            assert indices == list(range(indices[0], indices[0] + len(indices)))
            assert all(len(a) == 640 and not loud(a) for _, _, a in idle)
            assert idle[-1][1].shape == (512, 512, 3)

            await ws.send(json.dumps({"type": "say", "text": "Hello over the web socket, friend."}))
            speech = await frames_for(ws, 1.5)
            assert sum(loud(a) for _, _, a in speech) > 10

            await ws.send(json.dumps({"type": "interrupt"}))
            after = await frames_for(ws, 1.0)
            assert len(after) > 15
            assert sum(loud(a) for _, _, a in after) <= 3  # stops within a few frames
            assert not any(loud(a) for _, _, a in after[3:])

            for garbage in ("not json", json.dumps([1, 2]), json.dumps({"type": "dance"})):
                await ws.send(garbage)
            await ws.send(b"\x00\x01binary")
            errors = []
            deadline = time.monotonic() + 3
            while len(errors) < 4 and time.monotonic() < deadline:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "error":
                    errors.append(json.loads(message)["msg"])
            assert len(errors) == 4, errors
            assert len(await frames_for(ws, 0.5)) >= 8  # the session carries on
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await http.get(f"/sessions/{sid}")).status_code == 200
        async with httpx.AsyncClient(base_url=base) as http:  # the client went away
            for _ in range(50):
                if (await http.get(f"/sessions/{sid}")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get(f"/sessions/{sid}")).status_code == 404

    with serving() as base:
        asyncio.run(scenario(base))


def test_websocket_unknown_avatar_is_refused(default_avatar) -> None:
    async def scenario(base: str) -> None:
        url = base.replace("http://", "ws://") + "/ws?avatar=nobody"
        async with websockets.connect(url) as ws:
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and "no avatar named" in error["msg"]

    with serving() as base:
        asyncio.run(scenario(base))
