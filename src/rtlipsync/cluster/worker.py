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

import contextlib
import dataclasses
import logging
import os
from typing import Any

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
        id_share: tuple[int, int] = (0, 1),
    ) -> None:
        """``id_share``: this worker's share of session ids (`ServerConfig.id_share`), so no
        two workers of a cluster open the same one."""
        if home is not None:  # the data root: avatars and recordings of this host
            os.environ["RTLIPSYNC_HOME"] = home
        from rtlipsync.compose import server_config
        from rtlipsync.config import load_settings
        from rtlipsync.engines import make_engine
        from rtlipsync.face.avatar import load_avatar
        from rtlipsync.server import create_app
        from rtlipsync.server.threaded import ThreadedServer

        self.name = name
        self.capacity = capacity
        self._sent: dict[int, tuple[Any, ...]] = {}  # what `states` last told, per session
        # (``host``: off loopback the worker answers the Host its node is reached by, and
        # warns when it has no access token, as a server serving the network does.)
        settings = load_settings(config, host=host, max_sessions=capacity, engine=engine)
        load_avatar(settings.avatar)
        server = server_config(settings, warm_workers=True)
        shared = make_engine(settings.engine)  # one per worker: weights load once
        # Every request arrives from the gateway, whose address would be every client's: the
        # per-client limit would cap the whole worker, so the worker's capacity is the limit
        # (the gateway counts each client's sessions over the cluster instead).
        server = dataclasses.replace(
            server, engine=lambda: shared, max_sessions_per_client=capacity, id_share=id_share
        )
        self.app = create_app(server)
        self._server = ThreadedServer(self.app, host=host, name=f"worker-{name}")
        # Bound beyond loopback, it is reached at its node's own address.
        self.url = f"http://{host if host.startswith('127.') else _node_ip()}:{self._server.port}"
        try:
            self._server.start(STARTUP_TIMEOUT, ready=lambda: self.app.state.started)
        except RuntimeError as exc:
            raise RuntimeError(f"session worker {name} did not start its server") from exc
        log.info("session worker %s serving %d sessions at %s", name, capacity, self.url)

    def address(self) -> str:
        """The base URL of this worker's server."""
        return self.url

    def states(self, full: bool = False) -> dict[int, dict[str, Any] | None]:
        """Every live session here, with what a new session needs to continue it
        (`Session.continuation`) when that changed since the last ask (or for all of them,
        ``full``), else None: the gateway asks every second, and most conversations did not
        move since."""
        sessions = self.app.state.sessions
        answer: dict[int, dict[str, Any] | None] = {}
        marks: dict[int, tuple[Any, ...]] = {}
        for sid in sessions.ids():
            with contextlib.suppress(Exception):  # (ended between the two looks)
                session = sessions.get(sid)
                # Read from the actor's thread while the server's loop runs: copies only.
                mark = (
                    session.mode,
                    session.persona,
                    session.chat.turns if session.chat else 0,
                    session.realtime.turns if session.realtime else 0,
                )
                marks[sid] = mark
                changed = full or self._sent.get(sid) != mark
                answer[sid] = session.continuation() if changed else None
        self._sent = marks
        return answer

    def stop(self) -> None:
        """End every session cleanly and stop the server."""
        self._server.stop()


def _node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()
