"""Worker processes: results, progress, errors, a crash, cancellation, closing."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError

import pytest

from rtlipsync.errors import InputError
from rtlipsync.workers import WorkerCrashed, WorkerPool


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def counted(n: int, on_progress) -> str:  # noqa: ANN001
    for i in range(n):
        on_progress(i + 1, n)
    return os.environ.get("RTLIPSYNC_HOME", "")


def refuse() -> None:
    raise InputError("that video has no face in it: upload one that shows a face")


def die() -> None:
    os._exit(3)  # as a crash in native code or the OOM killer would end it


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class TwoPartError(Exception):
    """Pickles, but does not unpickle: its arguments do not rebuild it."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def refuse_oddly() -> None:
    raise TwoPartError("odd", "no rebuilding")


@pytest.fixture
def pool():
    workers = WorkerPool(size=1, name="test-worker")
    yield workers
    workers.close()


def test_calls_run_in_another_process_that_stays(pool: WorkerPool) -> None:
    assert pool.workers == []  # started lazily
    value, pid = pool.submit(square, 7).result(timeout=60)
    assert value == 49 and pid != os.getpid()
    assert pool.submit(square, 3).result(timeout=10) == (9, pid)  # the same worker
    assert pool.workers == [pid]


def test_progress_and_the_callers_data_root(pool: WorkerPool, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("RTLIPSYNC_HOME", str(tmp_path))
    seen = []
    home = pool.submit(counted, 4, progress=lambda d, t: seen.append((d, t))).result(timeout=60)
    assert home == str(tmp_path)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_an_error_comes_back_with_its_message(pool: WorkerPool) -> None:
    with pytest.raises(InputError, match="no face in it"):
        pool.submit(refuse).result(timeout=60)
    assert pool.submit(square, 2).result(timeout=10)[0] == 4  # the worker carries on


def test_fast_answers_are_never_lost_while_threads_compete(pool: WorkerPool) -> None:
    """A worker can answer before the thread that sent the call runs again (busy threads
    hold the interpreter): the answer must still find its call."""
    pool.submit(square, 1).result(timeout=60)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    for thread in spinners:
        thread.start()
    try:
        for _ in range(60):
            with pytest.raises(InputError):
                pool.submit(refuse).result(timeout=20)
    finally:
        stop.set()
        for thread in spinners:
            thread.join()


def test_an_answer_that_does_not_unpickle_fails_only_its_call(pool: WorkerPool) -> None:
    with pytest.raises(RuntimeError, match="unreadable answer"):
        pool.submit(refuse_oddly).result(timeout=60)
    assert pool.submit(square, 6).result(timeout=10)[0] == 36


def test_a_crashed_worker_fails_its_call_and_is_replaced(pool: WorkerPool) -> None:
    _, first = pool.submit(square, 1).result(timeout=60)
    crash = pool.submit(die)
    queued = pool.submit(square, 5)  # waits behind the crash
    with pytest.raises(WorkerCrashed, match=r"running die stopped \(exit code 3\)"):
        crash.result(timeout=60)
    value, second = queued.result(timeout=60)
    assert value == 25 and second != first  # a new worker took the next call


def test_cancelling_a_running_call_stops_it(pool: WorkerPool) -> None:
    running = pool.submit(sleep, 60.0)
    while not running.running():
        time.sleep(0.01)
    time.sleep(0.5)  # it is in the worker now
    started = time.monotonic()
    pool.cancel(running)
    with pytest.raises(CancelledError):
        running.result(timeout=10)
    assert time.monotonic() - started < 10
    assert pool.submit(square, 4).result(timeout=60)[0] == 16


def test_closing_stops_workers_and_cancels_what_waits() -> None:
    pool = WorkerPool(size=1, name="test-close")
    pool.submit(square, 1).result(timeout=60)
    (pid,) = pool.workers
    busy = pool.submit(sleep, 30.0)
    waiting = pool.submit(square, 2)
    pool.close()
    assert waiting.cancelled()
    with pytest.raises((CancelledError, WorkerCrashed)):
        busy.result(timeout=1)
    with pytest.raises(OSError):
        os.kill(pid, 0)  # the process is gone
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(square, 3)
