"""Who may use the server and whose session a request may drive, over real sockets.

A caller "from elsewhere" is made the way a reverse proxy on this machine makes one: the
request comes from loopback with ``X-Forwarded-For`` (uvicorn takes the client's address
from it, and the server no longer counts it as this machine).
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import websockets

from rtlipsync.config import load_settings
from rtlipsync.errors import InputError
from rtlipsync.server import ServerConfig
from rtlipsync.testing.peers import drain_socket

from conftest import serving

TOKEN = "a-long-enough-test-token-0123"
REMOTE = {"X-Forwarded-For": "203.0.113.9"}


def ws_url(base: str, path: str = "/ws", **query: str) -> str:
    url = base.replace("http://", "ws://") + path
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


async def opened(ws) -> dict:  # noqa: ANN001 - a websockets client connection
    """The session message a new WebSocket session starts with."""
    while True:
        message = await ws.recv()
        if isinstance(message, str):
            hello = json.loads(message)
            assert hello["type"] == "session", hello
            return hello


def test_sessions_from_elsewhere_need_their_secret(default_avatar) -> None:
    async def scenario(base: str) -> None:
        async with (
            websockets.connect(ws_url(base), additional_headers=REMOTE) as mine,
            websockets.connect(ws_url(base), additional_headers=REMOTE) as theirs,
            httpx.AsyncClient(base_url=base, headers=REMOTE) as http,
        ):
            me, them = await opened(mine), await opened(theirs)
            readers = [asyncio.create_task(drain_socket(w)) for w in (mine, theirs)]
            assert len(me["secret"]) >= 32 and me["secret"] != them["secret"]
            sid = them["sessionid"]

            # Another's id alone, a wrong secret, my secret on their id: 403, and an unknown
            # id answers the same way (ids cannot be scanned).
            for body in (
                {"sessionid": sid},
                {"sessionid": sid, "secret": "guess"},
                {"sessionid": sid, "secret": me["secret"]},
            ):
                r = await http.post("/is_speaking", json=body)
                assert r.status_code == 403, r.text
            unknown = await http.post("/is_speaking", json={"sessionid": 100})
            assert unknown.status_code == 403
            # an empty secret is no secret (and must not match an unknown id's none)
            empty = await http.post("/is_speaking", json={"sessionid": 100, "secret": ""})
            assert empty.status_code == 403
            assert unknown.json()["msg"].replace("100", "N") == (
                (await http.post("/is_speaking", json={"sessionid": sid})).json()["msg"]
            ).replace(str(sid), "N")
            for path, body in (
                ("/human", {"sessionid": sid, "text": "not yours"}),
                ("/interrupt_talk", {"sessionid": sid}),
                ("/close", {"sessionid": sid}),
                ("/record", {"sessionid": sid, "type": "start_record"}),
                ("/persona", {"sessionid": sid, "text": "obey"}),
            ):
                assert (await http.post(path, json=body)).status_code == 403, path
            assert (await http.get(f"/sessions/{sid}")).status_code == 403
            assert (await http.get(f"/record/{sid}")).status_code == 403
            form = await http.post("/humanaudio", data={"sessionid": str(sid)}, files={
                "file": ("a.wav", b"RIFF....WAVE", "audio/wav")
            })  # fmt: skip
            assert form.status_code == 403
            # "the oldest session" is the operator's alias only
            zero = await http.post("/is_speaking", json={"sessionid": 0})
            assert zero.status_code == 403 and "operator" in zero.json()["msg"]

            # With the secret, in the body, the header or the query: theirs to drive.
            secret = them["secret"]
            r = await http.post("/human", json={"sessionid": sid, "text": "hi", "secret": secret})
            assert r.status_code == 200, r.text
            r = await http.post(
                "/is_speaking", json={"sessionid": sid}, headers={"X-Session-Secret": secret}
            )
            assert r.status_code == 200 and r.json()["code"] == 0
            state = await http.get(f"/sessions/{sid}", params={"secret": secret})
            assert state.status_code == 200 and state.json()["sessionid"] == sid

            # The seed's echo socket: an id without the secret is refused, with it spoken.
            echo_url = ws_url(base, "/humanecho")
            async with websockets.connect(echo_url, additional_headers=REMOTE) as echo:
                await echo.send(json.dumps({"sessionid": sid, "text": "hello"}))
                assert json.loads(await echo.recv())["code"] == -1
                await echo.send("plain text names no session")
                assert "operator" in json.loads(await echo.recv())["msg"]
                await echo.send(json.dumps({"sessionid": sid, "secret": secret, "text": "hi"}))
                with pytest.raises(asyncio.TimeoutError):  # nothing to complain about
                    await asyncio.wait_for(echo.recv(), 0.5)

            r = await http.post("/close", json={"sessionid": sid, "secret": secret})
            assert r.status_code == 200
            for task in readers:
                task.cancel()

    with serving() as base:
        asyncio.run(scenario(base))


def test_on_this_machine_without_a_token_ids_and_zero_work_as_the_seed_expects(
    default_avatar,
) -> None:
    async def scenario(base: str) -> None:
        async with (
            websockets.connect(ws_url(base)) as first,
            websockets.connect(ws_url(base)) as second,
            httpx.AsyncClient(base_url=base) as http,
        ):
            a, b = await opened(first), await opened(second)
            readers = [asyncio.create_task(drain_socket(w)) for w in (first, second)]
            # an id alone (the seed's clients know no secrets)
            r = await http.post("/is_speaking", json={"sessionid": b["sessionid"]})
            assert r.status_code == 200
            # 0, as an int or a string, names the oldest live session
            for zero in (0, "0"):
                state = await http.get("/sessions/0")
                assert state.json()["sessionid"] == a["sessionid"]
                r = await http.post("/human", json={"sessionid": zero, "text": "hello there"})
                assert r.status_code == 200, r.text
            assert await _speaking(http, a["sessionid"])
            assert not (await http.get(f"/sessions/{b['sessionid']}")).json()["speaking"]
            for task in readers:
                task.cancel()

    with serving() as base:
        asyncio.run(scenario(base))


async def _speaking(http: httpx.AsyncClient, sid: int) -> bool:
    for _ in range(50):
        if (await http.get(f"/sessions/{sid}")).json()["speaking"]:
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_configured_token_guards_every_route_but_the_page_and_the_probes(
    default_avatar,
) -> None:
    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base) as http:
            for path in ("/avatars", "/metrics", "/openapi.json", "/avatars/default/poster.jpg"):
                r = await http.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "access token" in r.json()["msg"]
            assert (await http.post("/is_speaking", json={"sessionid": 0})).status_code == 401
            for path in ("/", "/health", "/ready"):
                assert (await http.get(path)).status_code == 200, path
            wrong = await http.get("/avatars", headers={"Authorization": "Bearer not-it"})
            assert wrong.status_code == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get("/avatars", headers=bearer)).status_code == 200

            # The page's way: /auth checks the token and keeps it in an HttpOnly cookie.
            assert (await http.post("/auth", json={"token": "not-it"})).status_code == 401
            r = await http.post("/auth", json={"token": TOKEN})
            assert r.status_code == 200
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert (await http.get("/avatars")).status_code == 200  # the client kept it

        # WebSockets: refused at the handshake without it, served with ?token=.
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(base)):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(ws_url(base, token=TOKEN)) as ws:
            hello = await opened(ws)
            reader = asyncio.create_task(drain_socket(ws))
            # The token's holder is the operator, here or elsewhere: any session, and 0.
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}", **REMOTE}
            ) as http:
                r = await http.post("/is_speaking", json={"sessionid": 0})
                assert r.status_code == 200 and r.json()["code"] == 0
                state = await http.get("/sessions/0")
                assert state.json()["sessionid"] == hello["sessionid"]
            reader.cancel()

    with serving(ServerConfig(access_token=TOKEN)) as base:
        asyncio.run(scenario(base))


def test_the_token_setting_refuses_a_guessable_token(monkeypatch) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="at least 16 characters"):
        load_settings(access_token="secret")
    monkeypatch.setenv("RTLIPSYNC_ACCESS_TOKEN", TOKEN)
    assert load_settings().access_token == TOKEN
    monkeypatch.delenv("RTLIPSYNC_ACCESS_TOKEN")
    assert load_settings().access_token == ""


def test_serving_the_network_without_a_token_warns_loudly(caplog) -> None:  # noqa: ANN001
    from rtlipsync.compose import network_rules

    with caplog.at_level(logging.WARNING, logger="rtlipsync"):
        network_rules(load_settings(host="127.0.0.1"))
        assert not caplog.records
        network_rules(load_settings(host="0.0.0.0", access_token=TOKEN))
        assert not caplog.records
        network_rules(load_settings(host="0.0.0.0"))
    assert "NO ACCESS TOKEN" in caplog.text and "RTLIPSYNC_ACCESS_TOKEN" in caplog.text


def test_cors_is_off_unless_origins_are_allowed_and_then_preflights_pass(default_avatar) -> None:
    page = "https://app.example"
    preflight = {
        "Origin": page,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-session-secret",
    }
    with serving() as base:
        r = httpx.options(f"{base}/human", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.post(f"{base}/is_speaking", json={"sessionid": 0}, headers={"Origin": page})
        assert r.status_code == 403  # another site's page, as before
    with serving(ServerConfig(allowed_origins=[page], access_token=TOKEN)) as base:
        r = httpx.options(f"{base}/human", headers=preflight)  # (a preflight has no token)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert "x-session-secret" in r.headers["access-control-allow-headers"].lower()
        r = httpx.get(
            f"{base}/avatars", headers={"Origin": page, "Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        r = httpx.options(f"{base}/human", headers={**preflight, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_a_websocket_refused_for_its_token_logs_no_error(default_avatar, capsys) -> None:  # noqa: ANN001
    """uvicorn logs "returned without completing handshake" as an error when a handshake is
    answered with an HTTP status; for a 401 nothing failed, so the log says only the 401."""
    from rtlipsync.logs import DENIED_HANDSHAKE, configure_logging
    from rtlipsync.server import create_app

    from conftest import serving_app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging()
    try:
        app = create_app(ServerConfig(access_token=TOKEN))
        with serving_app(app, log_level="info") as base:

            async def knock() -> int:
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(ws_url(base)):
                        pass
                return refused.value.response.status_code

            assert asyncio.run(knock()) == 401
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert '"WebSocket /ws" 401' in logged
    assert DENIED_HANDSHAKE not in logged
