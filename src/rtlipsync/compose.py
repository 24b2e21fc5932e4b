"""The composition root: settings become the parts a session is made of, in one place.

``load_settings`` (`rtlipsync.config`) reads the one settings tree (YAML, then environment,
then flags). `server_config` turns it into the server's typed configuration: the language
model, the realtime service, the voice and recogniser factories, the engine. `SessionMaker`
then makes every session of a process from that configuration, with what sessions share
(one language-model client, one recogniser in a worker process, one set of metrics), so
that the server, the CLI, benchmarks and tests all get sessions wired the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from rtlipsync.face.avatar import Avatar
from rtlipsync.metrics import Metrics
from rtlipsync.session import Session, new_session_id
from rtlipsync.speech.asr import ASRProvider, WorkerASR
from rtlipsync.speech.chat import ChatBrain
from rtlipsync.speech.llm import ChatLLM
from rtlipsync.workers import WorkerPool

if TYPE_CHECKING:
    from rtlipsync.config import Settings
    from rtlipsync.server.app import ServerConfig

log = logging.getLogger(__name__)


def server_config(settings: Settings, **extra: Any) -> ServerConfig:
    """The server's configuration from ``settings`` (already typed and checked by
    `load_settings`). ``extra`` sets the fields that are not settings (``engine``, the
    factory of each session's engine; ``warm_workers``, ...)."""
    from rtlipsync.server.app import ServerConfig

    tts = settings.tts
    tts()  # a bad voice fails now, with its message, not in a session
    fields: dict[str, Any] = {
        "avatar": settings.avatar,
        "max_sessions": settings.max_sessions,
        "ice_servers": settings.ice_servers,
        "llm": settings.llm,
        "realtime": settings.realtime,
        "mode": settings.mode,
        "tts": tts,
        "asr": settings.asr,
        "vad": settings.vad.options(),
        "max_audio_seconds": settings.max_audio_seconds,
        "max_upload_mb": settings.max_upload_mb,
        "max_avatar_upload_mb": settings.max_avatar_upload_mb,
        "max_request_kb": settings.max_request_kb,
        "max_queued_tasks": settings.max_queued_tasks,
        "webhook_hosts": settings.webhook_hosts,
        "access_token": settings.access_token or None,
        "media_roots": settings.media_roots,
        **network_rules(settings),
    }
    return ServerConfig(**{**fields, **extra})


def network_rules(settings: Settings) -> dict[str, list[str]]:
    """Which Host headers and browser origins the server answers: loopback names only when
    it listens on loopback (DNS rebinding reaches nothing), any host when it serves the
    network, unless the settings name them."""
    loopback = settings.host in ("127.0.0.1", "localhost", "::1")
    hosts = settings.allowed_hosts or (["localhost", "127.0.0.1", "::1"] if loopback else ["*"])
    if not loopback and not settings.access_token:
        log.warning(
            "\n%s\nNO ACCESS TOKEN, AND LISTENING ON %s: anyone who can reach this machine "
            "can open sessions, upload avatars and run jobs (sessions themselves still need "
            "their secrets). Set access_token in the config or RTLIPSYNC_ACCESS_TOKEN.\n%s",
            "!" * 78,
            settings.host,
            "!" * 78,
        )
    return {"allowed_hosts": hosts, "allowed_origins": settings.allowed_origins}


class SessionMaker:
    """Makes the sessions of one process from one `ServerConfig`.

    What sessions share is made once, here: the language-model client, the recogniser (a
    local one decodes in a worker process: in the server's own it held the interpreter and
    froze every session's video) and the metrics. `close` releases them.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.llm = ChatLLM(config.llm) if config.llm is not None else None
        self.metrics = Metrics()
        self.workers: WorkerPool | None = None
        if getattr(config.asr, "local", False):
            # A little below the server's priority: on two cores, a turn being decoded made
            # the live sessions' frames arrive up to 69 ms apart; niced, at most 48-60 ms.
            self.workers = WorkerPool(1, "rtlipsync-asr", nice=5)
            self.asr: ASRProvider = WorkerASR(config.asr, self.workers)
        else:
            self.asr = config.asr()

    def warm(self) -> None:
        """Start the recogniser's worker and load its model now (in the background)."""
        if isinstance(self.asr, WorkerASR):
            self.asr.warm()

    def make(
        self, avatar: Avatar, persona: str | None = None, taken: Container[int] = ()
    ) -> Session:
        """A new session on ``avatar``, in repeat mode (its owner chooses the mode: realtime
        opens a socket), with an id not in ``taken``."""
        session_id = new_session_id()
        while session_id in taken:
            session_id = new_session_id()
        session = Session(avatar, self.config.engine(), self.config.tts(), session_id)
        if self.llm is not None:
            session.chat = ChatBrain(self.llm)
        if persona:
            session.set_persona(persona)
        session.metrics = self.metrics
        session.asr = self.asr
        session.vad_options = dict(self.config.vad)
        return session

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()
        if self.workers is not None:
            await asyncio.to_thread(self.workers.close)
