"""The session workers of a cluster, on Ray, and which session lives on which.

`Cluster` starts each declared `WorkerSpec` as a Ray actor (a `SessionWorker`), places new
sessions by free capacity, and follows every worker once a second: its live sessions (an
ended one frees its place) and, for each, what a new session needs to continue it (avatar,
mode, persona, the conversation's memory). A worker that dies leaves its sessions `Lost`:
their clients are told to reconnect, and the one that presents a session's secret may resume
it on a live worker. The dead worker is started again, waiting longer after each failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rtlipsync.cluster.placement import ClusterFull, WorkerLoad, capacity_for, choose
from rtlipsync.cluster.worker import SessionWorker
from rtlipsync.server.access import same

log = logging.getLogger("rtlipsync.cluster")

WATCH_INTERVAL = 1.0  # s between the gateway's looks at each worker
LOST_KEPT = 10_000  # sessions of dead workers remembered, to tell their clients to reconnect
RESUME_WINDOW = 600.0  # s a dead worker's session can be resumed (its memory is kept so long)
TASKS_KEPT = 10_000  # background tasks whose worker is remembered
QUEUE_MAX = 1000  # new sessions that may wait for a place at once (with a queue wait)
RESTART_BACKOFF = (1.0, 60.0)  # s before starting a dead worker again: first, most


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
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when it dies
    # The avatars prepared where it runs (its host's data root); None until first read.
    avatars: frozenset[str] | None = None

    def has(self, avatar: str | None) -> bool:
        """Whether it can serve ``avatar`` (None: the default one, which every worker has;
        a worker whose avatars are not known yet is taken to have it)."""
        return avatar is None or self.avatars is None or avatar in self.avatars

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


class TooManySessions(Exception):
    """A client address that holds as many sessions as one may (HTTP's 429)."""


class SessionMoved(Exception):
    """A request about a session whose worker died: its client must open a new one."""

    def __init__(self, session_id: int, worker: str) -> None:
        super().__init__(
            f"session {session_id} ended with its worker {worker}: open a new session with "
            "POST /offer, or /ws?resume=ID&secret=SECRET (it goes to a live worker)"
        )
        self.session_id = session_id


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
        queue_wait: float = 0.0,
    ) -> None:
        """``queue_wait``: seconds a new session may wait for a place when every worker is
        full (0: refused at once)."""
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
        self._clients: dict[int, str] = {}  # session id -> the address it came from
        self._tasks: dict[str, str] = {}  # background task id -> worker name, oldest first
        # Sessions one client address may hold over the whole cluster (None: any number): a
        # worker cannot count them, as every request reaches it from the gateway.
        self.per_client: int | None = None
        self._lost: dict[int, Lost] = {}  # sessions of a worker that died, oldest first
        self._restarting: dict[str, asyncio.Task[None]] = {}  # by worker name
        self.restart = True  # start a dead worker again
        self._started_ray = False
        self.placing = asyncio.Lock()  # one placement at a time: counts stay true
        if queue_wait < 0:
            raise ValueError(f"a queue wait is 0 or more seconds, not {queue_wait:g}")
        self.queue_wait = queue_wait
        self.waiting = 0  # new sessions being placed, or waiting for a place
        self._room = asyncio.Event()  # set when a place may have come free

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
                    self._room.set()
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

    def place(self, avatar: str | None = None) -> Worker:
        """The worker a new session goes to: the freest of those whose host has ``avatar``
        prepared, or of all when none has it (the worker then says it does not know it);
        `ClusterFull` when none has room."""
        live = [w for w in self.workers.values() if w.alive]
        holders = [w for w in live if w.has(avatar)] or live
        if not holders:
            return self.workers[choose(self.loads())]  # (says why: none is running)
        return self.workers[choose([w.load() for w in holders])]

    def holder(self, avatar: str | None) -> Worker | None:
        """The live worker a request about ``avatar`` goes to (its poster, a render job, a
        new upload under that name): the freest of those whose host has it, else the freest
        of all; None when no worker runs."""
        live = [w for w in self.workers.values() if w.alive]
        holders = [w for w in live if w.has(avatar)] or live
        return min(holders, key=lambda w: (-w.load().free, len(w.sessions)), default=None)

    def task_at(self, task: str, worker: Worker) -> None:
        """A background task (an avatar's preparation, a render job) runs on ``worker``:
        asking about it goes there."""
        self._tasks[task] = worker.spec.name
        while len(self._tasks) > TASKS_KEPT:  # the oldest first
            del self._tasks[next(iter(self._tasks))]

    def task_host(self, task: str) -> Worker | None:
        """The live worker running background task ``task``, if known."""
        worker = self.workers.get(self._tasks.get(task, ""))
        return worker if worker is not None and worker.alive else None

    @contextlib.asynccontextmanager
    async def placement(self, client: str = "", avatar: str | None = None) -> AsyncIterator[Worker]:
        """The worker a new session goes to, held for it until it is opened there (one
        placement at a time, so the counts stay true). When every worker is full it waits
        up to ``queue_wait`` s for a place, first come first placed; `ClusterFull` when
        none came, or when QUEUE_MAX sessions wait already; `TooManySessions` when
        ``client`` holds `per_client` sessions already."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_wait
        self.waiting += 1
        try:
            if self.waiting > QUEUE_MAX:
                raise ClusterFull(f"{QUEUE_MAX} new sessions wait for a place already")
            # (Those ahead came earlier, so they give up earlier: this one is not kept past
            # its own wait but for the relay of the offer ahead.)
            await self.placing.acquire()
            try:
                held = sum(c == client for c in self._clients.values())
                if self.per_client is not None and held >= self.per_client:
                    raise TooManySessions(
                        f"{held} sessions are open from your address, the most one client "
                        "may hold; close one first"
                    )
                yield await self._free_place(deadline, avatar)
            finally:
                self.placing.release()
        finally:
            self.waiting -= 1

    async def _free_place(self, deadline: float, avatar: str | None) -> Worker:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self.place(avatar)
            except ClusterFull as full:
                left = deadline - loop.time()
                if left <= 0:
                    if self.queue_wait > 0:
                        raise ClusterFull(f"{full} (waited {self.queue_wait:g} s)") from None
                    raise
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), left)

    def opened(self, worker: Worker, session_id: int, secret: str, client: str = "") -> None:
        """A session placed on ``worker`` is open there (``client``: the address it came
        from, which `per_client` counts)."""
        self._clients[session_id] = client
        worker.sessions.add(session_id)
        worker.secrets[session_id] = secret
        self._owner[session_id] = worker.spec.name
        self._lost.pop(session_id, None)  # (its id was a dead session's once)

    def owner(self, session_id: int) -> Worker | None:
        name = self._owner.get(session_id)
        return self.workers.get(name) if name is not None else None

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

    def ended(self, worker: Worker, session_id: int) -> None:
        """A session ended on ``worker`` (it said so, or a close of it was answered): its
        place is free at once."""
        worker.ended(session_id)
        self._owner.pop(session_id, None)
        self._clients.pop(session_id, None)
        self._room.set()

    def host_of(self, session_id: int | None) -> Worker | None:
        """The worker a request about ``session_id`` goes to: the one hosting it; for 0 (the
        operator's "oldest session"), the oldest's; for none, or one unknown here, any live
        worker (it says what is wrong). None when no worker runs; `SessionMoved` when the
        session's worker died."""
        if session_id == 0:
            session_id = next(iter(self._owner), None)
        if session_id is not None:
            if (host := self.owner(session_id)) is not None:
                return host
            if (lost := self._lost.get(session_id)) is not None:
                raise SessionMoved(session_id, lost.worker)
        return self.any_live()

    def died(self, worker: Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        worker.gone.set()
        for sid in worker.sessions:
            self._owner.pop(sid, None)
            self._clients.pop(sid, None)
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
                    self.ended(worker, sid)
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
                    "avatars": sorted(w.avatars) if w.avatars is not None else None,
                }
                for w in self.workers.values()
            ],
            "sessions": len(self._owner),
            "placing": self.waiting,  # new sessions being placed or waiting for a place
            "queue_wait": self.queue_wait,
            "capacity": sum(w.spec.capacity for w in self.workers.values() if w.alive),
        }
