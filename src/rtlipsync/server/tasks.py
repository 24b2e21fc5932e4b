"""Background work for the server: avatar preparation and offline render jobs.

Both are slow and CPU-heavy, so they run one at a time on a worker thread (live sessions
keep the other core), report progress, and end `done` with a result or `failed` with the
sentence that says why. A job may name a webhook: it is POSTed the task's final state.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from rtlipsync.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Work = Callable[["Task", Progress], dict[str, Any]]  # gets its task and a progress callback


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


class Tasks:
    """A queue of background tasks, run one at a time."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtlipsync-task")
        self._lock = threading.Lock()

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def submit(
        self,
        kind: str,
        work: Work,
        webhook: str | None = None,
    ) -> Task:
        task = Task(id=secrets.token_hex(6), kind=kind, webhook=webhook)
        self._tasks[task.id] = task
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            task.progress = min(1.0, done / max(total, 1))

        def run() -> None:
            task.state = "running"
            try:
                task.result = work(task, progress)
                task.progress = 1.0
                task.state = "done"
            except InputError as exc:
                task.state, task.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - reported to the client, logged in full
                log.exception("%s task %s failed", kind, task.id)
                task.state, task.error = "failed", f"internal error: {exc}"
            log.info("%s task %s %s", kind, task.id, task.state)
            if task.webhook:
                asyncio.run_coroutine_threadsafe(self._notify(task), loop)

        self._pool.submit(run)
        return task

    async def _notify(self, task: Task) -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(task.webhook or "", json=task.public())
        except httpx.HTTPError as exc:
            log.warning("webhook %s for task %s failed: %s", task.webhook, task.id, exc)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
