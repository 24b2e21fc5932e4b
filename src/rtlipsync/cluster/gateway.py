"""The gateway of a cluster: the routes in front of its session workers.

``rtlipsync serve --cluster auto`` (a local Ray) or ``--cluster ray://HOST:PORT`` starts the
declared session workers as Ray actors and serves this gateway where the single server would
be. A new session (``POST /offer``) goes to the worker with the most free places; its SDP
answer comes from that worker, so the browser's media flows to and from the worker. Every
later request that names a session is relayed to the worker that hosts it; one that names
none goes to any live worker (they serve the same page and avatars).

The gateway keeps, for every live session, what a new session needs to continue it (avatar,
mode, persona, the conversation's memory), refreshed from its worker every second. When a
worker dies, the sessions it hosted answer 410 with ``reconnect: true`` instead of hanging;
the client's new ``POST /offer`` with ``resume`` (the old session's id, and its secret) is
placed on a live worker and goes on with the same avatar and memory. Sessions on the other
workers never notice, and the dead worker is started again. ``GET /cluster`` shows the
workers, their load and their sessions; ``/metrics`` adds per-worker figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rtlipsync.cluster.cluster import (
    Cluster,
    ResumeRefused,
    SessionMoved,
    TooManySessions,
    Worker,
    WorkerSpec,
)
from rtlipsync.cluster.placement import ClusterFull
from rtlipsync.cluster.relay import (
    UNRELAYED_HEADERS,
    as_id,
    avatar_of,
    json_object,
    relayed_headers,
    session_of,
    task_of,
)
from rtlipsync.cluster.sockets import relay_echo, relay_websocket
from rtlipsync.server.access import presented_secret
from rtlipsync.server.app import ServerConfig, add_gates, client_address

__all__ = ["Cluster", "Worker", "WorkerSpec", "cluster_metrics", "create_gateway"]

log = logging.getLogger("rtlipsync.cluster")

AVATARS_INTERVAL = 5.0  # s between the gateway's looks at which avatars each worker has


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error(status: int, msg: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": -1, "msg": msg, **extra}, status_code=status)


def _moved(moved: SessionMoved) -> JSONResponse:
    """What a session's client hears once its worker has died."""
    return _error(410, str(moved), reconnect=True)


def cluster_metrics(cluster: Cluster, scraped: dict[str, str]) -> bytes:
    """Prometheus text: the gateway's gauges per worker, then each worker's own families
    (``scraped``: worker name -> its /metrics text) merged, each sample labelled with its
    worker."""
    registry = CollectorRegistry()
    figures = {
        "alive": ("1 while the worker runs", lambda w: int(w.alive)),
        "capacity": ("sessions the worker may hold", lambda w: w.spec.capacity),
        "sessions": ("sessions live on the worker", lambda w: len(w.sessions)),
        "restarts": ("times the worker was started again", lambda w: w.restarts),
    }
    for key, (doc, value) in figures.items():
        gauge = Gauge(f"rtlipsync_worker_{key}", doc, ["worker"], registry=registry)
        for w in cluster.workers.values():
            gauge.labels(w.spec.name).set(value(w))
    families: dict[str, Metric] = {}
    for name, text in scraped.items():
        with contextlib.suppress(ValueError):  # (a worker's garbled answer: left out)
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type, family.unit),
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": name}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


@dataclass(eq=False)  # (a registry keys its collectors by identity)
class _Families:
    """Metric families collected elsewhere, as a registry's collector."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


def create_gateway(
    cluster: Cluster, started: bool = False, gates: ServerConfig | None = None
) -> FastAPI:
    """The gateway's app over ``cluster`` (started here unless ``started``). It is the
    public face of its workers, so every request passes the gates a server has, with the
    settings in ``gates`` (the access token, the workers' own; allowed hosts and origins;
    body sizes); relayed ones are checked again by their worker."""
    gates = gates or ServerConfig()
    # (The gateway's own requests to its workers: the token they share with it.)
    auth = {"Authorization": f"Bearer {gates.access_token}"} if gates.access_token else {}
    cluster.per_client = gates.max_sessions_per_client
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not started:
            await asyncio.to_thread(cluster.start)
        watcher = asyncio.get_running_loop().create_task(cluster.watch())
        avatars = asyncio.get_running_loop().create_task(follow_avatars())
        try:
            yield
        finally:
            watcher.cancel()
            avatars.cancel()
            await cluster.stop_restarts()
            await client.aclose()
            if not started:
                await asyncio.to_thread(cluster.shutdown)

    app = FastAPI(title="rtlipsync gateway", lifespan=lifespan)
    add_gates(app, gates)

    async def relay(worker: Worker, request: Request, body: bytes) -> Response:
        url = f"{worker.url}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        try:
            answer = await client.request(
                request.method, url, content=body, headers=relayed_headers(request)
            )
        except httpx.TransportError:
            cluster.died(worker)
            raise
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in UNRELAYED_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def listing(worker: Worker, headers: dict[str, str]) -> list[dict[str, Any]] | None:
        """A worker's ``GET /avatars`` list, or None (gone, refused, garbled)."""
        try:
            answer = await client.get(f"{worker.url}/avatars", headers=headers, timeout=5.0)
        except httpx.HTTPError:
            return None
        data = (json_object(answer.content) or {}).get("data")
        if answer.status_code != 200 or not isinstance(data, list):
            return None
        return [a for a in data if isinstance(a, dict) and isinstance(a.get("name"), str)]

    async def learn_avatars(worker: Worker, found: list[dict[str, Any]] | None = None) -> None:
        found = found if found is not None else await listing(worker, auth)
        if found is not None:
            worker.avatars = frozenset(a["name"] for a in found)

    async def follow_avatars() -> None:
        """Which avatars each worker's host has, every few seconds: a session asking for
        one goes where it is (hosts with data roots of their own hold different ones)."""
        while True:
            await asyncio.gather(*(learn_avatars(w) for w in cluster.workers.values() if w.alive))
            await asyncio.sleep(AVATARS_INTERVAL)

    @app.get("/avatars")
    async def avatars(request: Request) -> Response:
        """Every worker's prepared avatars, each name once."""
        live = [w for w in cluster.workers.values() if w.alive]
        headers = relayed_headers(request)
        found = await asyncio.gather(*(listing(w, headers) for w in live))
        if not any(items is not None for items in found):
            if not live:
                return _error(503, "no session worker is running")
            return await relay(live[0], request, b"")  # (its answer says what is wrong)
        merged: dict[str, dict[str, Any]] = {}
        for worker, items in zip(live, found, strict=True):
            if items is not None:
                await learn_avatars(worker, items)
                for item in items:
                    merged.setdefault(item["name"], item)
        return JSONResponse({"code": 0, "data": list(merged.values())})

    @app.get("/cluster")
    async def describe() -> dict[str, Any]:
        """The session workers, their load and their sessions."""
        return cluster.describe()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        """The gateway's view of each worker (alive, capacity, sessions, restarts), and each
        live worker's own figures with a ``worker`` label."""
        live = [w for w in cluster.workers.values() if w.alive]

        async def scrape(worker: Worker) -> str:
            try:
                answer = await client.get(f"{worker.url}/metrics", headers=auth, timeout=2.0)
            except httpx.HTTPError:
                return ""
            return answer.text if answer.status_code == 200 else ""

        texts = await asyncio.gather(*(scrape(w) for w in live))
        body = cluster_metrics(cluster, {w.spec.name: t for w, t in zip(live, texts, strict=True)})
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.post("/offer")
    async def offer(request: Request) -> Response:
        """A new session, placed on the worker with the most free places; the SDP answer
        is that worker's own. With ``resume`` (a session whose worker died) and that
        session's secret, the new one goes on with its avatar, mode, persona and memory;
        the answer says ``resumed`` (false: nothing of it is held here any more)."""
        body = await request.body()
        asked = json_object(body) or {}
        resume = asked.get("resume")
        carried: dict[str, Any] | None = None
        if resume is not None:
            old = as_id(resume)
            if old is None:
                return _error(400, "resume must be the id of the session to continue")
            field_secret = asked.get("secret") if isinstance(asked.get("secret"), str) else None
            try:
                carried = cluster.continuation(old, presented_secret(request, field_secret))
            except ResumeRefused as exc:
                return _error(403, str(exc))
            fields = {k: v for k, v in asked.items() if k not in ("resume", "secret")}
            for key, value in (carried or {}).items():
                if fields.get(key) is None and value:  # what the client says wins
                    fields[key] = value
            body = json.dumps(fields).encode()
        avatar = fields.get("avatar") if resume is not None else asked.get("avatar")
        try:
            place = cluster.placement(client_address(request), _name(avatar))
            async with place as worker:
                try:
                    answer = await relay(worker, request, body)
                except httpx.TransportError:
                    return _error(503, f"session worker {worker.spec.name} stopped; try again")
                if answer.status_code != 200:
                    return answer
                data = json.loads(answer.body)
                sid = int(data["sessionid"])
                cluster.opened(worker, sid, str(data["secret"]), client_address(request))
        except ClusterFull as exc:
            return _error(503, str(exc))
        except TooManySessions as exc:
            return _error(429, str(exc))
        log.info("session placed on worker %s", worker.spec.name, extra={"session": sid})
        if resume is None:
            return answer
        if carried is not None:
            cluster.resumed(old)
            log.info("session continues session %s", old, extra={"session": sid})
        return JSONResponse({**data, "resumed": carried is not None})

    @app.websocket("/ws")
    async def websocket_session(ws: WebSocket) -> None:
        """A whole session over one WebSocket, placed as an offer is and relayed both ways
        to its worker. With ``?resume=ID`` (and its secret: ``?secret=`` or the
        X-Session-Secret header) it goes on with a dead worker's session, as an offer's
        ``resume`` does, and its ``session`` message says ``resumed``. When the worker dies,
        the client hears ``{"type": "reconnect"}`` before the socket closes."""
        await relay_websocket(cluster, ws, relayed_headers(ws))

    @app.websocket("/humanecho")
    async def human_echo(ws: WebSocket) -> None:
        """Seed 002's echo socket: each message goes to the worker of the session it names
        (``?sessionid=``, or the message's ``sessionid``; none: the oldest session's)."""
        await relay_echo(cluster, ws, relayed_headers(ws))

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
    async def forward(path: str, request: Request) -> Response:
        """Any other request, to the worker it concerns: its session's, its background
        task's, or one whose host has the avatar it names (else the freest)."""
        body = await request.body()
        sid = await session_of(request, body)
        task = task_of(request)
        try:
            if sid is not None:
                worker = cluster.host_of(sid)
            elif task is not None and (runs := cluster.task_host(task)) is not None:
                worker = runs
            else:
                worker = cluster.holder(await avatar_of(request, body))
        except SessionMoved as moved:
            return _moved(moved)
        if worker is None:
            return _error(503, "no session worker is running")
        try:
            answer = await relay(worker, request, body)
        except httpx.TransportError:
            if sid is not None:
                return _moved(SessionMoved(sid, worker.spec.name))
            return _error(503, f"session worker {worker.spec.name} stopped; try again")
        if path == "close" and answer.status_code in (200, 404) and sid:  # (0: the oldest)
            # Closed, or gone already: its place is free now, not when the watcher looks.
            cluster.ended(worker, sid)
        if request.method == "POST" and answer.status_code == 200:
            started = json_object(answer.body) or {}
            for key in ("task", "job"):  # (asked about later: it runs on this worker)
                if isinstance(started.get(key), str):
                    cluster.task_at(started[key], worker)
        if task is not None or path == "digital_human/preprocess":
            await learn_avatars(worker)  # (a preparation may have ended: its avatar is new)
        return answer

    return app
