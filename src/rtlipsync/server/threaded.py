"""An ASGI app served by uvicorn in a thread of this process, on a port of its own.

A cluster's session worker runs its whole server this way inside its Ray actor (the actor's
own thread stays free to answer the gateway), and tests and benchmarks serve apps on loopback
ports the same way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now at ``host`` (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ThreadedServer:
    """``app`` under uvicorn at ``host``:``port`` in a thread; `start` returns once it serves."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str = "warning",
        name: str = "uvicorn",
    ) -> None:
        """``log_level`` "warning" keeps uvicorn's own logging; anything else logs each
        request through this process's logging, as a served server does."""
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        logs: dict[str, Any] = (
            {"log_level": log_level}
            if log_level == "warning"
            else {"log_config": None, "log_level": log_level}
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, **logs))
        self._thread = threading.Thread(target=self.server.run, name=name)

    def start(self, timeout: float = 30.0, ready: Callable[[], bool] = lambda: True) -> None:
        """Serve, and wait until uvicorn listens and ``ready()`` holds (an app's own startup,
        say); a `RuntimeError` if the server stops or ``timeout`` seconds pass first."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self.server.started and ready()):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving (the app's shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
