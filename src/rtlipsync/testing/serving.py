"""Servers on loopback ports in threads, for tests and benchmarks, and polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rtlipsync.server.threaded import ThreadedServer, free_port


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
    server = ThreadedServer(app, log_level=log_level, name="uvicorn-test")
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


async def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


@contextlib.contextmanager
def serve_process(home: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``rtlipsync serve`` in a process of its own (as users run it) with data root ``home``;
    yield its base URL and the process. Its output goes to ``home/serve.log``."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "RTLIPSYNC_HOME": str(home)}
    with (home / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "rtlipsync.cli", "serve", "--port", str(port), *flags],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((home / "serve.log").read_text()[-3000:])
                try:
                    if httpx.get(f"{base}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            yield base, server
        finally:
            server.terminate()
            server.wait(timeout=30)
