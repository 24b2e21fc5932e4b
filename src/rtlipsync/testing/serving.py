"""Servers on loopback ports in threads, for tests and benchmarks, and polling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(config: Any = None) -> Iterator[str]:
    """Run our server under uvicorn on a loopback port in a thread; yield its base URL."""
    from rtlipsync.server import create_app

    with serving_app(create_app(config)) as base:
        yield base


@contextlib.contextmanager
def serving_app(app: Any, log_level: str = "warning") -> Iterator[str]:
    """Run an ASGI app under uvicorn on a loopback port in a thread; yield its base URL.
    ``log_level`` "info" logs each request through the process's logging, as served."""
    import uvicorn

    port = free_port()
    logs = (
        {"log_level": log_level}
        if log_level == "warning"
        else {"log_config": None, "log_level": log_level}
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **logs))
    thread = threading.Thread(target=server.run, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())
