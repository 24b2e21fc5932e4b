"""Worker processes for heavy work, so no session's media clock ever waits for it.

Speech recognition, avatar preparation and offline renders can hold the interpreter for a
second or more (pocketsphinx decodes without releasing it): run in the server's process,
they froze every live session's video while they ran. A `WorkerPool` runs such calls in
separate processes instead:

- workers start lazily (spawned, so the server's threads and sockets are never forked) and
  stay up for the next call, keeping what they loaded (a recogniser's model);
- a call returns a `concurrent.futures.Future`; progress reports come back as it runs;
- a call can be cancelled while queued or while running (its worker is stopped and another
  started), so an abandoned job frees the CPU at once;
- a worker that dies (a crash in native code, the OOM killer, a kill) fails only the call it
  was running, with `WorkerCrashed` and a sentence saying so; the next call gets a new one;
- `close` stops the workers and joins the threads that read from them.

Functions and arguments travel by pickle: pass module-level functions and plain data.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class WorkerCrashed(RuntimeError):
    """The worker process running a call stopped before it answered."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    label: str
    progress: Progress | None
    future: Future = field(default_factory=Future)


def _worker_main(conn: Connection) -> None:
    """A worker's loop: run each call it is sent, answer with its result or its error."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args, kwargs, wants_progress, env = message
        os.environ.update(env)
        if wants_progress:

            def report(done: int, total: int) -> None:
                conn.send(("progress", done, total))

            kwargs = {**kwargs, "on_progress": report}
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            try:
                conn.send(("error", exc, traceback.format_exc()))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), ""))
            continue
        conn.send(("done", result, ""))


# Environment the workers must see as the caller sees it at each call (the data root).
_FORWARDED_ENV = ("RTLIPSYNC_HOME",)


class _Worker:
    def __init__(self, pool: WorkerPool, index: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(child,),
            name=f"{pool.name}-{index}",
            daemon=True,
        )
        self.process.start()
        self.pid = self.process.pid
        if pool.nice and self.pid is not None:
            # Lowered from outside at once: a new interpreter importing its modules at full
            # priority was enough to make a live session's video skip a frame.
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, pool.nice)
            except OSError:
                pass
        child.close()
        self.job: _Job | None = None
        self.stopping = False  # stopped on purpose: closing, or its call was cancelled
        self.reader = threading.Thread(
            target=pool._read, args=(self,), name=f"{pool.name}-{index}-reader", daemon=True
        )
        self.reader.start()


class WorkerPool:
    """Up to ``size`` worker processes that run calls in the order they were submitted.

    ``nice`` lowers the workers' CPU priority, so live sessions win a busy machine.
    """

    def __init__(self, size: int = 1, name: str = "rtlipsync-worker", nice: int = 0) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size, self.name, self.nice = size, name, nice
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._queue: deque[_Job] = deque()
        self._started = 0
        self._closed = False

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        progress: Progress | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` in a worker; with ``progress``, ``fn`` is also given
        ``on_progress(done, total)``, whose reports reach ``progress`` in this process."""
        job = _Job(fn, args, kwargs, label or getattr(fn, "__name__", "a call"), progress)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._queue.append(job)
            self._dispatch()
        return job.future

    def cancel(self, future: Future) -> None:
        """Cancel the call behind ``future``: dropped if queued, its worker stopped if it is
        running (the worker is replaced when next needed)."""
        if future.cancel():
            return
        with self._lock:
            for worker in self._busy:
                if worker.job is not None and worker.job.future is future:
                    worker.stopping = True
                    worker.process.terminate()

    @property
    def workers(self) -> list[int]:
        """Process ids of the live workers (for logs and tests)."""
        with self._lock:
            return [w.process.pid for w in self._idle + self._busy if w.process.pid is not None]

    def close(self) -> None:
        """Stop every worker (calls still queued are cancelled) and join their readers."""
        with self._lock:
            self._closed = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            workers = self._idle + self._busy
        for worker in workers:
            worker.stopping = True
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join(timeout=3)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=3)
            worker.reader.join(timeout=3)

    # -- inside ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand queued calls to idle workers, starting workers up to ``size`` (lock held)."""
        while self._queue:
            job = self._queue[0]
            if job.future.cancelled():
                self._queue.popleft()
                continue
            if not self._idle:
                if len(self._busy) >= self.size:
                    return
                self._started += 1
                self._idle.append(_Worker(self, self._started))
            worker = self._idle.pop()
            self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                self._idle.append(worker)
                continue
            env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            # The worker is marked busy with this job before it is sent: a worker can answer
            # before `send` returns here, and its reader must find the job it answered.
            worker.job = job
            self._busy.append(worker)
            try:
                worker.conn.send((job.fn, job.args, job.kwargs, job.progress is not None, env))
            except Exception as exc:  # noqa: BLE001 - e.g. arguments that do not pickle
                worker.job = None
                self._busy.remove(worker)
                self._idle.append(worker)
                job.future.set_exception(exc)
                continue

    def _read(self, worker: _Worker) -> None:
        """A worker's reader thread: deliver its answers until it stops."""
        while True:
            try:
                kind, value, detail = worker.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 - an answer that does not unpickle here
                kind, value, detail = "error", RuntimeError(f"unreadable answer: {exc}"), ""
            with self._lock:
                job = worker.job
            if kind == "progress":
                if job is not None and job.progress is not None:
                    try:
                        job.progress(value, detail)
                    except Exception:  # noqa: BLE001 - a progress callback must not kill us
                        log.exception("progress callback of %s failed", job.label)
                continue
            with self._lock:
                worker.job = None
                if worker in self._busy:
                    self._busy.remove(worker)
                if not self._closed:
                    self._idle.append(worker)
            if job is not None and not job.future.done():
                if kind == "done":
                    job.future.set_result(value)
                else:
                    if detail:
                        log.debug("%s failed in a worker:\n%s", job.label, detail)
                    job.future.set_exception(value)
            with self._lock:
                if not self._closed:
                    self._dispatch()
        # The worker is gone: whatever it was running is lost.
        worker.process.join(timeout=5)
        with self._lock:
            job, worker.job = worker.job, None
            for pool in (self._idle, self._busy):
                if worker in pool:
                    pool.remove(worker)
            crashed = not worker.stopping
        if job is not None and not job.future.done():
            code = worker.process.exitcode
            if not crashed:
                job.future.set_exception(CancelledError(f"{job.label} was cancelled"))
            else:
                log.warning("%s: worker %s stopped (exit code %s)", self.name, worker.pid, code)
                job.future.set_exception(
                    WorkerCrashed(
                        f"the worker process running {job.label} stopped (exit code {code}) "
                        "before it finished; the work was lost: try again"
                    )
                )
        worker.conn.close()
        with self._lock:
            if not self._closed:
                self._dispatch()
