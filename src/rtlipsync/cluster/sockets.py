"""The gateway's WebSockets: ``/ws`` sessions placed and relayed, ``/humanecho`` by message.

A ``/ws`` session is the transport for networks where WebRTC's UDP is blocked: the browser
reaches only the gateway, over TCP, so the gateway places the session as it places an offer
and then passes every message on, both ways, unchanged (frames and their audio, the
microphone, commands). A frame crosses one more hop than over WebRTC; the session's clock
and its stalled-client rule stay the worker's.

When the worker dies, the client hears ``{"type": "reconnect", "sessionid": ...}`` and the
socket closes with 1012 (service restart); ``/ws?resume=ID&secret=SECRET`` then goes on with
the same avatar, mode, persona and memory, which the gateway hands the new session as its
first messages (``persona``, ``memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rtlipsync.cluster.cluster import ResumeRefused, SessionMoved, TooManySessions
from rtlipsync.cluster.placement import ClusterFull
from rtlipsync.cluster.relay import as_id, json_object
from rtlipsync.server.access import presented_secret
from rtlipsync.server.app import client_address

if TYPE_CHECKING:
    from rtlipsync.cluster.cluster import Cluster, Worker

log = logging.getLogger("rtlipsync.cluster")

# To a worker: no compression (frames are JPEG already), messages as large as uvicorn's own
# limit (a 1080p frame's JPEG is far below it), pings to notice a worker's host vanishing.
UPSTREAM: dict[str, Any] = {"compression": None, "max_size": 16 * 2**20, "open_timeout": 10}
DEATH_WAIT = 5.0  # s to learn whether a socket that broke off means its worker died
UNREACHABLE = (OSError, InvalidHandshake, ConnectionClosed, TimeoutError)
# A worker's socket that ended so: no close at all (1006: its process died), or its server
# going away or stopping (1001, 1012).
STOPPING = {None, 1001, 1006, 1012}


def _url(worker: Worker, path: str, query: dict[str, str]) -> str:
    base = "ws" + worker.url.removeprefix("http")
    return f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"


async def _refuse(ws: WebSocket, status: int, msg: str, code: int = 1008) -> None:
    """Tell an accepted client why it gets no session (``status`` as HTTP would say it),
    then close: 1013 (try again later) for a full cluster, else 1008."""
    with contextlib.suppress(Exception):  # (it may have gone already)
        await ws.send_json({"type": "error", "msg": msg, "status": status})
        await ws.close(code=code)


async def relay_websocket(cluster: Cluster, ws: WebSocket, headers: dict[str, str]) -> None:
    """Place a ``/ws`` session on a worker and relay it until either side ends it."""
    query = dict(ws.query_params)
    resume, field_secret = query.pop("resume", None), query.pop("secret", None)
    await ws.accept()
    carried: dict[str, Any] | None = None
    old = as_id(resume)
    if resume is not None:
        if old is None:
            return await _refuse(ws, 400, "resume must be the id of the session to continue")
        try:
            carried = cluster.continuation(old, presented_secret(ws, field_secret))
        except ResumeRefused as exc:
            return await _refuse(ws, 403, str(exc))
        for key in ("avatar", "mode"):  # (what the client says wins)
            if not query.get(key) and carried and carried.get(key):
                query[key] = str(carried[key])
    try:
        async with cluster.placement(client_address(ws), query.get("avatar") or None) as worker:
            try:
                upstream = await connect(
                    _url(worker, "/ws", query), additional_headers=headers, **UPSTREAM
                )
                first = await asyncio.wait_for(upstream.recv(), 60)
            except UNREACHABLE as exc:
                msg = f"session worker {worker.spec.name} did not open it ({exc}); try again"
                return await _refuse(ws, 503, msg)
            opened = json_object(first) if isinstance(first, str) else None
            is_session = opened is not None and opened.get("type") == "session"
            sid = as_id(opened.get("sessionid")) if opened and is_session else None
            if opened is not None and sid is not None:
                cluster.opened(worker, sid, str(opened.get("secret")), client_address(ws))
    except ClusterFull as exc:
        return await _refuse(ws, 503, str(exc), code=1013)
    except TooManySessions as exc:
        return await _refuse(ws, 429, str(exc))
    try:
        if opened is not None and sid is not None:
            log.info(
                "session placed on worker %s (WebSocket)", worker.spec.name, extra={"session": sid}
            )
            if resume is not None:
                await _carry_over(upstream, carried)
                if carried is not None and old is not None:
                    cluster.resumed(old)
                    log.info("session continues session %s", old, extra={"session": sid})
                first = json.dumps({**opened, "resumed": carried is not None})
        await _send(ws, first)
        if await _pipe(ws, upstream) and sid is not None:
            await _worker_gone(cluster, ws, worker, sid)
    finally:
        with contextlib.suppress(Exception):
            await upstream.close()


async def _carry_over(upstream: ClientConnection, carried: dict[str, Any] | None) -> None:
    """A resumed session's persona and memory, as the new session's first messages."""
    if carried and carried.get("persona"):
        await upstream.send(json.dumps({"type": "persona", "text": carried["persona"]}))
    if carried and carried.get("memory"):
        await upstream.send(json.dumps({"type": "memory", "messages": carried["memory"]}))


async def _send(ws: WebSocket, message: str | bytes) -> None:
    if isinstance(message, bytes):
        await ws.send_bytes(message)
    else:
        await ws.send_text(message)


async def _pipe(ws: WebSocket, upstream: ClientConnection) -> bool:
    """Pass messages both ways until one side ends; the worker's close (code and reason)
    reaches the client. True when the worker's side broke off, or closed because its server
    is stopping: then its client may have to resume elsewhere."""

    async def down() -> None:
        async for message in upstream:
            await _send(ws, message)

    async def up() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text") or "")

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[1] in done:  # the client went (or its socket failed): so does the worker's
        return False
    error = tasks[0].exception()
    if error is not None and not isinstance(error, ConnectionClosed):
        return False  # (sending to the client failed: it is gone)
    if upstream.close_code in STOPPING:
        return True
    with contextlib.suppress(Exception):
        await ws.close(code=upstream.close_code or 1000, reason=upstream.close_reason or "")
    return False


async def _worker_gone(cluster: Cluster, ws: WebSocket, worker: Worker, session_id: int) -> None:
    """The worker's socket broke off: once the gateway sees the worker dead, the client is
    told to resume; from a worker still alive, this session alone has ended."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker.gone.wait(), DEATH_WAIT)
    with contextlib.suppress(Exception):
        if worker.alive:
            msg = f"session {session_id} ended: its worker {worker.spec.name} closed it"
            await ws.send_json({"type": "error", "msg": msg, "status": 502})
            await ws.close(code=1011)
            return
        moved = SessionMoved(session_id, worker.spec.name)
        await ws.send_json({"type": "reconnect", "msg": str(moved), "sessionid": session_id})
        await ws.close(code=1012)


async def relay_echo(cluster: Cluster, ws: WebSocket, headers: dict[str, str]) -> None:
    """``/humanecho`` through the gateway: each text message goes to the worker hosting the
    session it names, over one socket per worker, opened when first needed; what a worker
    answers (its errors) comes back on this socket."""
    query = dict(ws.query_params)
    named = as_id(query.get("sessionid"))
    channels: dict[str, ClientConnection] = {}  # by worker address (a restart is a new one)
    readers: list[asyncio.Task[None]] = []

    async def answers(upstream: ClientConnection) -> None:
        with contextlib.suppress(Exception):  # (either side gone: nothing more to pass)
            async for message in upstream:
                await _send(ws, message)

    async def channel(worker: Worker) -> ClientConnection:
        upstream = channels.get(worker.url)
        if upstream is None:
            upstream = await connect(
                _url(worker, "/humanecho", query), additional_headers=headers, **UPSTREAM
            )
            channels[worker.url] = upstream
            readers.append(asyncio.create_task(answers(upstream)))
        return upstream

    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await ws.send_json({"code": -1, "msg": "send text"})
                continue
            target = named
            if text.lstrip().startswith("{"):
                fields = json_object(text)
                if fields is not None and "sessionid" in fields:
                    target = as_id(fields["sessionid"])  # (not a number: the worker says so)
            try:
                worker = cluster.host_of(target if target is not None else 0)
            except SessionMoved as moved:
                await ws.send_json({"code": -1, "msg": str(moved), "reconnect": True})
                continue
            if worker is None:
                await ws.send_json({"code": -1, "msg": "no session worker is running"})
                continue
            try:
                await (await channel(worker)).send(text)
            except UNREACHABLE:
                channels.pop(worker.url, None)
                msg = f"session worker {worker.spec.name} did not take it; try again"
                await ws.send_json({"code": -1, "msg": msg})
    except WebSocketDisconnect:
        return
    finally:
        for upstream in channels.values():
            with contextlib.suppress(Exception):
                await upstream.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
