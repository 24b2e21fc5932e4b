"""Passing a request on to a worker: the session it names, and the headers the worker gets.

The gateway reads only enough of a request to route it; whatever is malformed is passed on,
and the worker that gets it says what is wrong, as a single server would.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from starlette.requests import HTTPConnection, Request

from rtlipsync.server.access import from_this_machine

# Routes that name their session in the path, not in a sessionid field.
SESSION_PATH = re.compile(r"^/(?:sessions|record)/(\d+)$")
# Routes about one background task (an avatar's preparation, a render job).
TASK_PATH = re.compile(r"^/(?:tasks|jobs)/([^/]+)(?:/result)?$")
# Routes about one avatar, by its name in the path.
AVATAR_PATH = re.compile(r"^/avatars/([^/]+)/")
# The fields that name an avatar: an upload's, a render job's, seed 002's.
AVATAR_FIELDS = ("name", "avatar", "streamer_id")
# Headers not passed on: those of one hop (RFC 9110 7.6.1), those the relay sets itself, and
# those the gateway checks for its workers.
UNRELAYED_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    # Checked here (SameOrigin): the worker would compare the page's origin with its own
    # address, not the gateway's, and refuse every request of the page it serves.
    "origin",
}


def as_id(raw: object) -> int | None:
    """A session id as a client wrote it (a number, or its digits), or None."""
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None


def json_object(body: bytes | str) -> dict[str, Any] | None:
    """A body or message as a JSON object, or None (not JSON, not an object, too deep)."""
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    return None


async def session_of(request: Request, body: bytes) -> int | None:
    """The session a request names, if any: in its path (``/sessions/ID``), its query, or
    the ``sessionid`` field of its JSON or form body."""
    if found := SESSION_PATH.match(request.url.path):
        return as_id(found.group(1))
    raw: Any = request.query_params.get("sessionid")
    kind = request.headers.get("content-type", "")
    if raw is None and body and kind.startswith("application/json"):
        raw = (json_object(body) or {}).get("sessionid")
    elif raw is None and body and kind.startswith(("multipart/form-data", "application/x-www")):
        with contextlib.suppress(Exception):  # (a malformed form: the worker says what)
            raw = (await request.form()).get("sessionid")
    return as_id(raw)


def task_of(request: Request) -> str | None:
    """The background task a request asks about (``/tasks/ID``, ``/jobs/ID``), if any."""
    found = TASK_PATH.match(request.url.path)
    return found.group(1) if found else None


async def avatar_of(request: Request, body: bytes) -> str | None:
    """The avatar a request is about, if any: in its path (``/avatars/NAME/...``) or an
    avatar field of its JSON or form body (an upload's ``name``, a job's ``avatar``, seed
    002's ``streamer_id``)."""
    if found := AVATAR_PATH.match(request.url.path):
        return found.group(1)
    if not body:
        return None
    fields: Any = {}
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        fields = json_object(body) or {}
    elif kind.startswith(("multipart/form-data", "application/x-www")):
        with contextlib.suppress(Exception):  # (a malformed form: the worker says what)
            fields = await request.form()
    names = [fields.get(key) for key in AVATAR_FIELDS]
    return next((name for name in names if isinstance(name, str)), None)


def relayed_headers(connection: HTTPConnection) -> dict[str, str]:
    """A request's headers as its worker gets them: those of this hop left out, and the
    caller's address added (the worker sees the gateway's; a caller from elsewhere must not
    pass for this machine's operator there)."""
    headers = {
        k: v
        for k, v in connection.headers.items()
        if k.lower() not in UNRELAYED_HEADERS and not k.lower().startswith("sec-websocket-")
    }
    if not from_this_machine(connection.scope) and connection.client is not None:
        seen = headers.pop("x-forwarded-for", None)
        headers["x-forwarded-for"] = ", ".join(filter(None, [seen, connection.client.host]))
    return headers
