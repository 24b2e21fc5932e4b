"""Keeping native libraries' own printing off the user's terminal.

MediaPipe's C++ core (TFLite, absl) writes start-up notices straight to file descriptor 2
from its worker threads, at moments no caller controls. They mean nothing to a user and bury
our own one-line errors, so a process that talks to a terminal points fd 2 at /dev/null for
its lifetime and keeps Python's ``sys.stderr`` on the real terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterator


class _SessionField(logging.Filter):
    """Give every record a ``session`` field, so each line says which session it is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = "-"
        return True


# Credentials as libraries print them at debug level (websockets logs every handshake
# header, httpx and openai their requests; uvicorn's access log shows query strings): the
# header's value, a key, token or session secret in a query string or cookie, or an
# OpenAI-style key anywhere.
_SECRETS = (
    re.compile(
        r"(?i)((?:authorization|x-session-secret)['\"]?\s*[:=,]\s*['\"]?)"
        r"(?:bearer\s+|basic\s+)?[^\s'\",)]+"
    ),
    re.compile(r"(?i)((?:api[_-]?key|access_token|token|secret)=)[^\s&'\";]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
)


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[redacted]``."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class _Redact(logging.Filter):
    """Keep credentials out of the log, whichever library writes the line (with ``-v`` the
    realtime service's API key was logged in its handshake's Authorization header)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


POLLED = ("/sessions/", "/tasks/", "/jobs/", "/health", "/ready", "/metrics")


class _QuietPolls(logging.Filter):
    """Drop uvicorn's access lines for answered status polls: the page asks for its
    session's state four times a second, which buried everything else in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        _, method, path, _, status = args
        polled = str(path).startswith(POLLED) and method in ("GET", "HEAD")
        return not (polled and isinstance(status, int) and status < 400)


# What uvicorn's WebSocket protocol logs as an error when an app refuses a handshake with an
# HTTP response (its "websocket.http.response" extension), as `server.access` does for a
# WebSocket without the access token: the client got its 401; nothing failed.
DENIED_HANDSHAKE = "ASGI callable returned without completing handshake."


class _DeniedHandshakes(logging.Filter):
    """Drop uvicorn's error line for a WebSocket refused with an HTTP answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DENIED_HANDSHAKE


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes, not the one at set-up: it is
    swapped by `native_logs_hidden` (and by test capture), and the old one may be closed."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(verbose: bool = False) -> None:
    """Structured one-line logs on stderr: time, level, session id, source, message."""
    handler = _CurrentStderr()
    handler.addFilter(_SessionField())
    handler.addFilter(_Redact())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s session=%(session)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Through the one handler above, even where uvicorn's own logging config ran before.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _QuietPolls) for f in access.filters):
        access.addFilter(_QuietPolls())
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DeniedHandshakes) for f in errors.filters):
        errors.addFilter(_DeniedHandshakes())
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)


@contextlib.contextmanager
def native_logs_hidden() -> Iterator[None]:
    """Send what native libraries write straight to fd 2 (MediaPipe's TFLite and absl start-up
    notices) to /dev/null, while Python's own stderr (errors, progress bars, logs) still
    reaches the terminal. Does nothing when stderr is not a real file (tests capture it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    if fd != 2:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0), write_through=True)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        sys.stderr.close()
        sys.stderr = old_stderr
        os.close(real)
        os.close(devnull)
