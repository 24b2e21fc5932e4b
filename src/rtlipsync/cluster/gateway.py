"""The gateway of a cluster: session workers on Ray, placement, and the routes in front.

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
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rtlipsync.cluster.placement import ClusterFull, WorkerLoad, capacity_for, choose
from rtlipsync.cluster.worker import SessionWorker
from rtlipsync.server.access import from_this_machine, presented_secret, same
from rtlipsync.server.app import ServerConfig, add_gates

log = logging.getLogger("rtlipsync.cluster")

WATCH_INTERVAL = 1.0  # s between the gateway's looks at each worker
LOST_KEPT = 10_000  # sessions of dead workers remembered, to tell their clients to reconnect
RESUME_WINDOW = 600.0  # s a dead worker's session can be resumed (its memory is kept so long)
RESTART_BACKOFF = (1.0, 60.0)  # s before starting a dead worker again: first, most
# Routes that name their session in the path, not in a sessionid field.
SESSION_PATH = re.compile(r"^/(?:sessions|record)/(\d+)$")
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
    # Checked here (SameOrigin): the worker would compare the page's origin with its own
    # address, not the gateway's, and refuse every request of the page it serves.
    "origin",
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
    """A started worker as the gateway knows it: its actor, address and sessions, and for
    each session its secret and what a new session needs to continue it."""

    spec: WorkerSpec
    actor: Any
    url: str
    sessions: set[int] = field(default_factory=set)
    alive: bool = True
    secrets: dict[int, str] = field(default_factory=dict)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    restarts: int = 0  # times it was started again after dying
    restart_at: float | None = None  # when to start it again (dead, not being started)
    # Ask for every session's state, not only the changed ones: an answer was lost.
    resync: bool = True

    def load(self) -> WorkerLoad:
        return WorkerLoad(self.spec.name, self.spec.capacity, len(self.sessions), self.alive)

    def ended(self, session_id: int) -> None:
        self.sessions.discard(session_id)
        self.secrets.pop(session_id, None)
        self.states.pop(session_id, None)


@dataclass
class Lost:
    """A session whose worker died: where it was, and what resuming it needs."""

    worker: str
    secret: str | None
    state: dict[str, Any] | None
    at: float = field(default_factory=time.monotonic)


class ResumeRefused(Exception):
    """A resume that names a session without presenting its secret."""


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
        self._lost: dict[int, Lost] = {}  # sessions of a worker that died, oldest first
        self._restarting: dict[str, asyncio.Task[None]] = {}  # by worker name
        self.restart = True  # start a dead worker again
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
        actors = [self._actor(spec) for spec in self.specs]
        urls = ray.get([a.address.remote() for a in actors])
        for spec, actor, url in zip(self.specs, actors, urls, strict=True):
            self.workers[spec.name] = Worker(spec, actor, url)

    def _actor(self, spec: WorkerSpec, generation: int = 0) -> Any:
        """Start ``spec``'s worker as a Ray actor (its server starts in its constructor)."""
        import ray

        share = (self.specs.index(spec), len(self.specs))  # its own session ids
        return (
            ray.remote(SessionWorker)
            .options(
                name=f"rtlipsync-{spec.name}-{generation}",
                num_cpus=spec.cpus,
                num_gpus=spec.gpus,
                resources=spec.resources or None,
                max_restarts=0,  # the gateway starts it again, and learns its new address
            )
            .remote(
                spec.name,
                spec.capacity,
                home=self.home,
                config=self.config,
                host=self.worker_host,
                engine=self.engine,
                id_share=share,
            )
        )

    def _start_again(self, dead: Worker) -> None:
        """Start a dead worker's replacement (blocking: its server loads first)."""
        import ray

        restarts = dead.restarts + 1
        if not self.restart:
            return  # (the gateway is stopping)
        with contextlib.suppress(Exception):  # (one taken for dead that was only unreachable
            ray.kill(dead.actor)  # must not hold its GPU against its replacement)
        actor = self._actor(dead.spec, restarts)
        try:
            url = ray.get(actor.address.remote(), timeout=300)
        except Exception:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            raise
        self.workers[dead.spec.name] = Worker(dead.spec, actor, url, restarts=restarts)
        log.info("session worker %s started again at %s", dead.spec.name, url)

    async def _restart_due(self) -> None:
        """Start again every dead worker whose time has come; one that fails to start is
        tried again later, waiting twice as long each time."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            due = worker.restart_at
            if worker.alive or due is None or due > now or worker.spec.name in self._restarting:
                continue

            async def again(dead: Worker = worker) -> None:
                try:
                    await asyncio.to_thread(self._start_again, dead)
                except Exception as exc:  # noqa: BLE001 - Ray's or the worker's own failure
                    dead.restarts += 1
                    wait = min(RESTART_BACKOFF[0] * 2**dead.restarts, RESTART_BACKOFF[1])
                    dead.restart_at = time.monotonic() + wait
                    log.warning(
                        "session worker %s did not start again (%s); next try in %.0f s",
                        dead.spec.name,
                        exc,
                        wait,
                    )
                finally:
                    self._restarting.pop(dead.spec.name, None)

            self._restarting[worker.spec.name] = asyncio.get_running_loop().create_task(again())

    async def stop_restarts(self) -> None:
        """No more restarts; wait for those under way (their workers are then stopped with
        the others by `shutdown`)."""
        self.restart = False
        if self._restarting:
            await asyncio.wait(list(self._restarting.values()), timeout=300)

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

    def opened(self, worker: Worker, session_id: int, secret: str) -> None:
        worker.sessions.add(session_id)
        worker.secrets[session_id] = secret
        self._owner[session_id] = worker.spec.name
        self._lost.pop(session_id, None)  # (its id was a dead session's once)

    def owner(self, session_id: int) -> Worker | None:
        name = self._owner.get(session_id)
        return self.workers.get(name) if name is not None else None

    def lost(self, session_id: int) -> str | None:
        """The worker a session was on, if that worker died."""
        lost = self._lost.get(session_id)
        return lost.worker if lost is not None else None

    def continuation(self, session_id: int, secret: str | None) -> dict[str, Any] | None:
        """What a dead worker's session needs to go on elsewhere (avatar, mode, persona,
        memory), for the client that presents its secret; None when no such session is held
        here (never heard of, ended, resumed already, or longer ago than RESUME_WINDOW).
        `ResumeRefused` for a wrong or missing secret."""
        lost = self._lost.get(session_id)
        if lost is None or lost.state is None or lost.secret is None:
            return None
        if not same(secret, lost.secret):
            raise ResumeRefused(
                f"session {session_id} is not yours to resume: send the secret that opened it "
                "(X-Session-Secret, or a secret field)"
            )
        return lost.state

    def resumed(self, session_id: int) -> None:
        """A dead worker's session went on as another: it cannot be resumed twice."""
        lost = self._lost.get(session_id)
        if lost is not None:
            lost.state = lost.secret = None

    def any_live(self) -> Worker | None:
        return next((w for w in self.workers.values() if w.alive), None)

    def died(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        for sid in worker.sessions:
            self._owner.pop(sid, None)
            self._lost[sid] = Lost(
                worker.spec.name, worker.secrets.get(sid), worker.states.get(sid)
            )
        while len(self._lost) > LOST_KEPT:  # the oldest first
            del self._lost[next(iter(self._lost))]
        log.warning(
            "session worker %s stopped; its %d sessions must reconnect",
            worker.spec.name,
            len(worker.sessions),
        )
        worker.sessions, worker.secrets, worker.states = set(), {}, {}
        if self.restart:
            worker.restart_at = time.monotonic() + RESTART_BACKOFF[0]

    def _forget_old(self) -> None:
        """Dead sessions' memories go after RESUME_WINDOW (their 410 stays)."""
        too_old = time.monotonic() - RESUME_WINDOW
        for lost in self._lost.values():
            if lost.at > too_old:
                break  # (oldest first)
            lost.state = lost.secret = None

    async def watch(self) -> None:
        """Follow each worker: its live sessions (ended ones free their places) and what
        each needs to be continued, and whether it is still there; start dead ones again."""
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
                    live = await asyncio.wait_for(worker.actor.states.remote(worker.resync), 10)
                except (RayActorError, ray.exceptions.RaySystemError):
                    self.died(worker)
                    continue
                except asyncio.TimeoutError:
                    # Busy, not gone: looked at again next round. Its answer may still come
                    # and be lost, so the next asks for everything.
                    worker.resync = True
                    continue
                worker.resync = False
                # (None: unchanged since the last ask.)
                worker.states = {
                    sid: state if state is not None else worker.states.get(sid, {})
                    for sid, state in live.items()
                }
                for sid in known - set(live):
                    worker.ended(sid)
                    self._owner.pop(sid, None)
            self._forget_old()
            await self._restart_due()
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
                    "restarts": w.restarts,
                }
                for w in self.workers.values()
            ],
            "sessions": len(self._owner),
            "capacity": sum(w.spec.capacity for w in self.workers.values() if w.alive),
        }


def _as_id(raw: object) -> int | None:
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None


def _json_object(body: bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    return None


async def _session_of(request: Request, body: bytes) -> int | None:
    """The session a request names, if any: in its path (``/sessions/ID``), its query, or
    the ``sessionid`` field of its JSON or form body."""
    if found := SESSION_PATH.match(request.url.path):
        return _as_id(found.group(1))
    raw: Any = request.query_params.get("sessionid")
    kind = request.headers.get("content-type", "")
    if raw is None and body and kind.startswith("application/json"):
        raw = (_json_object(body) or {}).get("sessionid")
    elif raw is None and body and kind.startswith(("multipart/form-data", "application/x-www")):
        with contextlib.suppress(Exception):  # (a malformed form: the worker says what)
            raw = (await request.form()).get("sessionid")
    return _as_id(raw)


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
    access_token = gates.access_token
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
            await cluster.stop_restarts()
            await client.aclose()
            if not started:
                await asyncio.to_thread(cluster.shutdown)

    app = FastAPI(title="rtlipsync gateway", lifespan=lifespan)
    add_gates(app, gates)

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

    @app.get("/metrics")
    async def metrics() -> Response:
        """The gateway's view of each worker (alive, capacity, sessions, restarts), and each
        live worker's own figures with a ``worker`` label."""
        auth = {"Authorization": f"Bearer {access_token}"} if access_token else {}
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
        asked = _json_object(body) or {}
        resume = asked.get("resume")
        carried: dict[str, Any] | None = None
        if resume is not None:
            old = _as_id(resume)
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
        async with cluster.placing:
            try:
                worker = cluster.place()
            except ClusterFull as exc:
                return _error(503, str(exc))
            try:
                answer = await relay(worker, request, body)
            except httpx.TransportError:
                return _error(503, f"session worker {worker.spec.name} stopped; try again")
            if answer.status_code != 200:
                return answer
            data = json.loads(answer.body)
            sid = int(data["sessionid"])
            cluster.opened(worker, sid, str(data["secret"]))
        log.info("session placed on worker %s", worker.spec.name, extra={"session": sid})
        if resume is None:
            return answer
        if carried is not None:
            cluster.resumed(old)
            log.info("session continues session %s", old, extra={"session": sid})
        return JSONResponse({**data, "resumed": carried is not None})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        sid = await _session_of(request, body)
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
