"""Background work for the server: avatar preparation and offline render jobs.

Both are slow and CPU-heavy, so they run one at a time in a worker process (at a lower CPU
priority, so live sessions keep their clocks and win the CPU), report progress, and end
`done` with a result or `failed` with the sentence that says why. A worker that crashes
fails only its task. A job may name a webhook: it is POSTed the task's final state.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any

import httpx

from rtlipsync.errors import InputError
from rtlipsync.workers import WorkerCrashed, WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Task:
    id: str
    kind: str
    state: str = "queued"  # queued, running, done, failed
    progress: float = 0.0
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    webhook: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": round(self.progress, 3),
            "error": self.error,
            **self.result,
        }


class TasksFull(Exception):
    """As many tasks wait as the server queues: the client should try again later."""


FINISHED_KEPT = 256  # finished tasks whose state can still be asked for


class Tasks:
    """A queue of background tasks, run one at a time in a worker process.

    At most ``max_pending`` wait or run at once (uploads to prepare, renders, the seed's
    awaited requests): without a bound one client could queue uploads until the disk was
    full. Finished tasks are forgotten past the newest `FINISHED_KEPT`.
    """

    def __init__(self, max_pending: int = 8) -> None:
        self._tasks: dict[str, Task] = {}
        self._pool = WorkerPool(1, "rtlipsync-task", nice=10)
        self.max_pending = max_pending
        self._pending = 0
        self._count = threading.Lock()  # (finished tasks are counted off in the pool's thread)

    def check_room(self) -> None:
        """Raise `TasksFull` if no more work may be queued now (before an upload is kept)."""
        if self._pending >= self.max_pending:
            raise TasksFull(
                f"{self._pending} tasks are waiting or running, the most this server queues; "
                "try again when one is done"
            )

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def warm(self) -> None:
        """Start the worker and import the jobs' modules there now, without waiting."""
        from rtlipsync.server import jobs

        self._pool.submit(jobs.ready, label="warming up")

    @property
    def workers(self) -> list[int]:
        """Process ids of the task worker processes now running."""
        return self._pool.workers

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(6)

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` in the worker, awaited: for requests that answer with its result.
        It waits its turn behind running tasks; a cancelled request cancels it."""
        self._hold()
        try:
            future = self._pool.submit(work, *args, label=getattr(work, "__name__", "a job"))
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                self._pool.cancel(future)
                raise
        finally:
            self._done_one()

    def submit(
        self,
        kind: str,
        work: Callable[..., dict[str, Any]],
        *args: Any,
        webhook: str | None = None,
        task_id: str | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> Task:
        """Run ``work(*args, on_progress=...)`` (a module-level function: it is sent to the
        worker) as a task of ``kind``; its returned dict is added to the task's result.
        ``cleanup`` runs here once it has ended, however (a crashed worker cleans nothing)."""
        self._hold()
        task = Task(id=task_id or self.new_id(), kind=kind, webhook=webhook)
        self._tasks[task.id] = task
        self._forget_old()
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            task.state = "running"
            task.progress = min(1.0, done / max(total, 1))

        def finished(future: Future) -> None:
            self._done_one()
            try:
                task.result.update(future.result())
                task.progress, task.state = 1.0, "done"
            except InputError as exc:
                task.state, task.error = "failed", str(exc)
            except (WorkerCrashed, CancelledError) as exc:
                task.state, task.error = "failed", str(exc) or f"{kind} task cancelled"
            except Exception as exc:  # noqa: BLE001 - reported to the client, logged in full
                log.error("%s task %s failed", kind, task.id, exc_info=exc)
                task.state, task.error = "failed", f"internal error: {exc}"
            log.info("%s task %s %s", kind, task.id, task.state)
            if cleanup is not None:
                cleanup()
            if task.webhook and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._notify(task), loop)

        try:
            future = self._pool.submit(work, *args, progress=progress, label=f"the {kind} task")
        except BaseException:
            self._done_one()  # (never queued: its place is free again)
            del self._tasks[task.id]
            raise
        future.add_done_callback(finished)
        return task

    def _hold(self) -> None:
        with self._count:
            self.check_room()
            self._pending += 1

    def _done_one(self) -> None:
        with self._count:
            self._pending -= 1

    def _forget_old(self) -> None:
        finished = [t for t in self._tasks.values() if t.state in ("done", "failed")]
        for task in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self._tasks[task.id]

    async def _notify(self, task: Task) -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(task.webhook or "", json=task.public())
        except httpx.HTTPError as exc:
            log.warning("webhook %s for task %s failed: %s", task.webhook, task.id, exc)

    def shutdown(self) -> None:
        self._pool.close()
