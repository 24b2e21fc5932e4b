"""A session worker: one per host (a GPU, or a CPU host for the CPU engine), many sessions.

It runs a whole rtlipsync server inside the Ray actor, on its own port: the engine loads its
weights once for every session here, each session's aiortc peer lives here (so the video is
encoded where it is rendered and sent to the browser from here), and every rule of a single
server holds unchanged (limits, secrets, the recogniser's worker process). The gateway only
places sessions and relays their control requests.

The class is plain Python; `rtlipsync.cluster.gateway` makes it a Ray actor with the
resources the worker declares, so this module imports without Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

log = logging.getLogger("rtlipsync.cluster")

STARTUP_TIMEOUT = 120.0  # s for the worker's server to load its avatar and start


class SessionWorker:
    """Hosts sessions behind its own HTTP server; ``capacity`` is its `max_sessions`."""

    def __init__(
        self,
        name: str,
        capacity: int,
        home: str | None = None,
        config: str | None = None,
        host: str = "127.0.0.1",
        engine: str | None = None,
    ) -> None:
        import socket

        import uvicorn

        if home is not None:  # the data root: avatars and recordings of this host
            os.environ["RTLIPSYNC_HOME"] = home
        from rtlipsync.compose import server_config
        from rtlipsync.config import load_settings
        from rtlipsync.engines import make_engine
        from rtlipsync.face.avatar import load_avatar
        from rtlipsync.server import create_app

        self.name = name
        self.capacity = capacity
        # (``host``: off loopback the worker answers the Host its node is reached by, and
        # warns when it has no access token, as a server serving the network does.)
        settings = load_settings(config, host=host, max_sessions=capacity, engine=engine)
        load_avatar(settings.avatar)
        server = server_config(settings, warm_workers=True)
        shared = make_engine(settings.engine)  # one per worker: weights load once
        # Every request arrives from the gateway, whose address would be every client's: the
        # per-client limit would cap the whole worker, so the worker's capacity is the limit.
        server = dataclasses.replace(
            server, engine=lambda: shared, max_sessions_per_client=capacity
        )
        self.app = create_app(server)
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        # Bound beyond loopback, it is reached at its node's own address.
        self.url = f"http://{host if host.startswith('127.') else _node_ip()}:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=host, port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name=f"worker-{name}")
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (self._server.started and self.app.state.started):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"session worker {name} did not start its server")
            time.sleep(0.05)
        log.info("session worker %s serving %d sessions at %s", name, capacity, self.url)

    def address(self) -> str:
        """The base URL of this worker's server."""
        return self.url

    def sessions(self) -> list[int]:
        """The ids of the sessions live here now."""
        return self.app.state.sessions.ids()

    def stop(self) -> None:
        """End every session cleanly and stop the server."""
        self._server.should_exit = True
        self._thread.join(timeout=15)


def _node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()
