"""The gates a request passes before any route: who may use the server, whose session it
may drive, which sites' pages may send it (`SameOrigin`) and how large its body may be
(`BodyLimit`).

Two credentials, two questions:

- **The access token** (``access_token`` in the config, ``RTLIPSYNC_ACCESS_TOKEN``) answers
  "may you use this server at all?". When one is set, every HTTP route and WebSocket except
  the page, the health probes and `/auth` answers 401 without it. It is presented as
  ``Authorization: Bearer TOKEN`` (scripts), as ``?token=TOKEN`` (a WebSocket from a page
  cannot set headers) or as the HttpOnly cookie `/auth` sets once the page has asked for it.
  Whoever holds it is the server's *operator*: their scripts may use any session by id, and
  ``sessionid`` 0 names the oldest live one (the seed's clients do so). When no token is
  set, callers on this machine are the operator, which is the seed's local setup; the server
  listens on loopback by default, and says loudly when it serves the network without one.
- **A session's secret** answers "is this session yours?". ``/offer`` and the WebSocket's
  ``session`` message hand it to the client that opened the session; anyone else must
  present it (``X-Session-Secret`` header, a ``secret`` field, or ``?secret=``) to drive,
  read, record or close that session. Session ids are six digits: a scan of all of them took
  five minutes, so an id alone controls nothing. A caller who is not the operator and has
  no secret gets the same 403 for a live session and an unknown one, so ids cannot be
  scanned either.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import urllib.parse
from typing import Any

from starlette.requests import HTTPConnection

TOKEN_COOKIE = "rtlipsync_token"
SECRET_HEADER = "x-session-secret"
OPERATOR = "rtlipsync.operator"  # the scope key where `Access` leaves its verdict
# Answered without the token: the page (it asks for the token), the probes a supervisor
# polls, and the route that takes the token.
PUBLIC = frozenset({"/", "/health", "/ready", "/auth", "/favicon.ico"})
# A request relayed by a proxy on this machine comes from loopback but not from this machine.
_FORWARDED = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def same(presented: str | None, expected: str) -> bool:
    """Whether a presented credential is ``expected``, in time that does not tell how much
    of it matched."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def from_this_machine(scope: dict[str, Any]) -> bool:
    """A connection from a loopback address that no proxy relayed."""
    client = scope.get("client")
    if not client:
        return False
    headers = dict(scope.get("headers", []))
    if any(name in headers for name in _FORWARDED):
        return False
    try:
        return ipaddress.ip_address(str(client[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


def presented_token(scope: dict[str, Any]) -> str | None:
    """The access token a request carries: its bearer header, its cookie or ``?token=``."""
    headers = dict(scope.get("headers", []))
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return urllib.parse.unquote(value)
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("token", [None])[-1]


class Access:
    """Refuse requests without the access token (when one is set), and mark each request
    with whether it comes from the operator (`OPERATOR` in its scope)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token or None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.token is None:
            scope[OPERATOR] = from_this_machine(scope)
        else:
            scope[OPERATOR] = same(presented_token(scope), self.token)
            if not scope[OPERATOR] and scope["path"] not in PUBLIC:
                await _unauthorized(scope, send)
                return
        await self.app(scope, receive, send)


async def _unauthorized(scope: dict[str, Any], send: Any) -> None:
    message = (
        "this server needs its access token: send Authorization: Bearer TOKEN "
        "(or ?token=TOKEN on a WebSocket)"
    )
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
        "extensions", {}
    ):
        await send({"type": "websocket.close", "code": 1008})
        return
    www = [(b"www-authenticate", b'Bearer realm="rtlipsync"')]
    await refuse(send, 401, message, www, websocket=scope["type"] == "websocket")


class SameOrigin:
    """Refuse a browser's WebSocket or state-changing request sent by another site's page.

    Browsers name the page that makes a request in ``Origin``; any page a user visits could
    open a session on their localhost server or post to it. A request whose Origin is not
    the server itself (its Host) nor in ``allowed`` gets 403 (a WebSocket is closed before
    it is accepted). Requests without an Origin (curl, the seed's scripts, SDKs) pass.
    """

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app, self.allowed = app, {o.rstrip("/") for o in allowed}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        guarded = scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS")
        )
        if guarded:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and origin != "null" and not self._allowed(origin, host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                return await refuse(send, 403, f"requests from {origin} are not allowed here")
            if origin == "null":  # a sandboxed frame or a file:// page
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                return await refuse(send, 403, "requests from an opaque origin are not allowed")
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin.rstrip("/") in self.allowed or "*" in self.allowed:
            return True
        return urllib.parse.urlsplit(origin).netloc.lower() == host.lower()


class BodyLimit:
    """Refuse a request body larger than its route allows before any of it is read.

    A 200 MB upload was written out in full before its 413, and a 10 MB SDP offer froze
    every session while it was parsed. The limit is judged on ``Content-Length``; a body
    without one (chunked) is refused with 411, as every browser and client sends it.
    """

    def __init__(self, app: Any, limits: dict[str, int], default: int) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.limits.get(scope["path"], self.default)
        length = headers.get(b"content-length")
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
            return await refuse(send, 411, "send the body with a Content-Length")
        try:
            size = int(length or 0)
        except ValueError:
            return await refuse(send, 400, "Content-Length is not a number")
        if size > limit:
            return await refuse(send, 413, f"request body is larger than {limit // 1024} KB")
        await self.app(scope, receive, send)


async def refuse(
    send: Any,
    status: int,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    websocket: bool = False,
) -> None:
    """Answer ``{"code": -1, "msg": message}`` with ``status`` from a middleware (before the
    app has read anything); a WebSocket's answer goes as its handshake's HTTP response."""
    body = json.dumps({"code": -1, "msg": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    kind = "websocket.http.response" if websocket else "http.response"
    await send({"type": f"{kind}.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": f"{kind}.body", "body": body})


def is_operator(connection: HTTPConnection) -> bool:
    """Whether `Access` found the request to come from the server's operator."""
    return bool(connection.scope.get(OPERATOR))


def presented_secret(connection: HTTPConnection, field: str | None = None) -> str | None:
    """The session secret a request presents: in its body (``field``), its
    ``X-Session-Secret`` header or its ``?secret=``."""
    return field or connection.headers.get(SECRET_HEADER) or connection.query_params.get("secret")
