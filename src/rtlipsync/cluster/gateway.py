"""The gateway of a cluster: session workers on Ray, placement, and the routes in front.

``rtlipsync serve --cluster auto`` (a local Ray) or ``--cluster ray://HOST:PORT`` starts the
declared session workers as Ray actors and serves this gateway where the single server would
be. A new session (``POST /offer``) goes to the worker with the most free places; its SDP
answer comes from that worker, so the browser's media flows to and from the worker. Every
later request that names a session is relayed to the worker that hosts it; one that names
none goes to any live worker (they serve the same page and avatars).

When a worker dies, the sessions it hosted answer 410 with ``reconnect: true`` instead of
hanging: the client opens a new session through ``/offer``, and it is placed on a live
worker. Sessions on the other workers never notice. ``GET /cluster`` shows the workers,
their load and their sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rtlipsync.cluster.placement import ClusterFull, WorkerLoad, capacity_for, choose
from rtlipsync.cluster.worker import SessionWorker
from rtlipsync.server.access import Access, from_this_machine

log = logging.getLogger("rtlipsync.cluster")

WATCH_INTERVAL = 1.0  # s between the gateway's looks at each worker
LOST_KEPT = 10_000  # sessions of dead workers remembered, to tell their clients to reconnect
# Headers that belong to one hop (RFC 9110 7.6.1) or that the relay sets itself.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}


@dataclass
class WorkerSpec:
    """One session worker to start: its capacity (sessions, or a GPU's fps budget) and the
    Ray resources it claims (a GPU each, say, or a custom resource naming a host)."""

    name: str
    sessions: int | None = None
    fps_budget: float | None = None
    gpus: float = 0.0
    cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return capacity_for(self.sessions, self.fps_budget)


@dataclass
class Worker:
    """A started worker as the gateway knows it: its actor, address and sessions."""

    spec: WorkerSpec
    actor: Any
    url: str
    sessions: set[int] = field(default_factory=set)
    alive: bool = True

    def load(self) -> WorkerLoad:
        return WorkerLoad(self.spec.name, self.spec.capacity, len(self.sessions), self.alive)


class Cluster:
    """The session workers and the table of which session lives on which."""

    def __init__(
        self,
        workers: Sequence[WorkerSpec],
        address: str = "auto",
        home: str | None = None,
        config: str | None = None,
        engine: str | None = None,
        worker_host: str = "127.0.0.1",
    ) -> None:
        if not workers:
            raise ValueError("a cluster needs at least one session worker")
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"session worker names must differ: {names}")
        self.specs = list(workers)
        self.address = address
        self.home, self.config, self.engine, self.worker_host = home, config, engine, worker_host
        self.workers: dict[str, Worker] = {}
        self._owner: dict[int, str] = {}  # session id -> worker name
        self._lost: dict[int, str] = {}  # sessions of a worker that died
        self._started_ray = False
        self.placing = asyncio.Lock()  # one placement at a time: counts stay true

    def start(self) -> None:
        """Connect to Ray (``auto``: a local one, started here) and start every worker."""
        import ray

        if not ray.is_initialized():
            if self.address == "auto":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started_ray = True
        if self.home is None or self.home == os.environ.get("RTLIPSYNC_HOME"):
            # Workers on this machine share its data root: the avatar is prepared once,
            # here, not by every worker at once.
            from rtlipsync.config import load_settings
            from rtlipsync.face.avatar import load_avatar

            load_avatar(load_settings(self.config).avatar)
        remote = ray.remote(SessionWorker)
        actors = [
            remote.options(
                name=f"rtlipsync-{spec.name}",
                num_cpus=spec.cpus,
                num_gpus=spec.gpus,
                resources=spec.resources or None,
                max_restarts=0,
            ).remote(
                spec.name,
                spec.capacity,
                home=self.home,
                config=self.config,
                host=self.worker_host,
                engine=self.engine,
            )
            for spec in self.specs
        ]
        urls = ray.get([a.address.remote() for a in actors])
        for spec, actor, url in zip(self.specs, actors, urls, strict=True):
            self.workers[spec.name] = Worker(spec, actor, url)

    def shutdown(self) -> None:
        """Stop every worker (their sessions end) and Ray, when this gateway started it."""
        import ray

        for worker in self.workers.values():
            if worker.alive:
                with contextlib.suppress(Exception):
                    ray.get(worker.actor.stop.remote(), timeout=20)
            with contextlib.suppress(Exception):
                ray.kill(worker.actor)
        self.workers.clear()
        if self._started_ray:
            ray.shutdown()

    def loads(self) -> list[WorkerLoad]:
        return [w.load() for w in self.workers.values()]

    def place(self) -> Worker:
        """The worker a new session goes to (`ClusterFull` when none has room)."""
        return self.workers[choose(self.loads())]

    def opened(self, worker: Worker, session_id: int) -> None:
        worker.sessions.add(session_id)
        self._owner[session_id] = worker.spec.name

    def owner(self, session_id: int) -> Worker | None:
        name = self._owner.get(session_id)
        return self.workers.get(name) if name is not None else None

    def lost(self, session_id: int) -> str | None:
        """The worker a session was on, if that worker died."""
        return self._lost.get(session_id)

    def any_live(self) -> Worker | None:
        return next((w for w in self.workers.values() if w.alive), None)

    def died(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        for sid in worker.sessions:
            self._owner.pop(sid, None)
            self._lost[sid] = worker.spec.name
        while len(self._lost) > LOST_KEPT:  # the oldest first
            del self._lost[next(iter(self._lost))]
        log.warning(
            "session worker %s stopped; its %d sessions must reconnect",
            worker.spec.name,
            len(worker.sessions),
        )
        worker.sessions = set()

    async def watch(self) -> None:
        """Follow each worker: its live sessions (ended ones free their places) and whether
        it is still there."""
        import ray
        from ray.exceptions import RayActorError

        while True:
            for worker in list(self.workers.values()):
                if not worker.alive:
                    continue
                # Only sessions known before asking can have ended: one placed while the
                # answer is on its way is not in it yet.
                known = set(worker.sessions)
                try:
                    live = await asyncio.wait_for(worker.actor.sessions.remote(), 10)
                except (RayActorError, ray.exceptions.RaySystemError):
                    self.died(worker)
                    continue
                except asyncio.TimeoutError:
                    continue  # busy, not gone: looked at again next round
                ended = known - set(live)
                worker.sessions -= ended
                for sid in ended:
                    self._owner.pop(sid, None)
            await asyncio.sleep(WATCH_INTERVAL)

    def describe(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "name": w.spec.name,
                    "url": w.url,
                    "alive": w.alive,
                    "capacity": w.spec.capacity,
                    "free": w.load().free,
                    "sessions": sorted(w.sessions),
                    "gpus": w.spec.gpus,
                }
                for w in self.workers.values()
            ],
            "sessions": len(self._owner),
            "capacity": sum(w.spec.capacity for w in self.workers.values() if w.alive),
        }


def _session_of(request: Request, body: bytes) -> int | None:
    """The session a request names (``sessionid`` in its query or JSON body), if any."""
    raw: Any = request.query_params.get("sessionid")
    json_body = request.headers.get("content-type", "").startswith("application/json")
    if raw is None and body and json_body:
        with contextlib.suppress(ValueError, RecursionError):
            data = json.loads(body)
            if isinstance(data, dict):
                raw = data.get("sessionid")
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None


def _error(status: int, msg: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": -1, "msg": msg, **extra}, status_code=status)


def _moved(session_id: int, worker: str) -> JSONResponse:
    """What a session's client hears once its worker has died."""
    return _error(
        410,
        f"session {session_id} ended with its worker {worker}: open a new session with "
        "POST /offer (it goes to a live worker)",
        reconnect=True,
    )


def create_gateway(
    cluster: Cluster, started: bool = False, access_token: str | None = None
) -> FastAPI:
    """The gateway's app over ``cluster`` (started here unless ``started``). With
    ``access_token`` (the workers' own), the gateway's routes need it as a server's do;
    relayed requests are checked again by their worker."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not started:
            await asyncio.to_thread(cluster.start)
        watcher = asyncio.get_running_loop().create_task(cluster.watch())
        try:
            yield
        finally:
            watcher.cancel()
            await client.aclose()
            if not started:
                await asyncio.to_thread(cluster.shutdown)

    app = FastAPI(title="rtlipsync gateway", lifespan=lifespan)
    app.add_middleware(Access, token=access_token)

    async def relay(worker: Worker, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        if not from_this_machine(request.scope) and request.client is not None:
            # The worker sees the gateway's address; a caller from elsewhere must not pass
            # for this machine's operator there.
            seen = headers.pop("x-forwarded-for", None)
            headers["x-forwarded-for"] = ", ".join(filter(None, [seen, request.client.host]))
        url = f"{worker.url}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        try:
            answer = await client.request(request.method, url, content=body, headers=headers)
        except httpx.TransportError:
            cluster.died(worker)
            raise
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    @app.get("/cluster")
    async def describe() -> dict[str, Any]:
        """The session workers, their load and their sessions."""
        return cluster.describe()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/offer")
    async def offer(request: Request) -> Response:
        """A new session, placed on the worker with the most free places; the SDP answer
        is that worker's own."""
        body = await request.body()
        async with cluster.placing:
            try:
                worker = cluster.place()
            except ClusterFull as exc:
                return _error(503, str(exc))
            try:
                answer = await relay(worker, request, body)
            except httpx.TransportError:
                return _error(503, f"session worker {worker.spec.name} stopped; try again")
            if answer.status_code == 200:
                sid = json.loads(answer.body)["sessionid"]
                cluster.opened(worker, int(sid))
                log.info("session placed on worker %s", worker.spec.name, extra={"session": sid})
        return answer

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        sid = _session_of(request, body)
        worker = cluster.owner(sid) if sid is not None else cluster.any_live()
        if sid is not None and worker is None:
            gone = cluster.lost(sid)
            if gone is not None:
                return _moved(sid, gone)
            worker = cluster.any_live()  # unknown here: the worker says what is wrong
        if worker is None:
            return _error(503, "no session worker is running")
        try:
            return await relay(worker, request, body)
        except httpx.TransportError:
            if sid is not None:
                return _moved(sid, worker.spec.name)
            return _error(503, f"session worker {worker.spec.name} stopped; try again")

    return app
