"""Hostile clients against a live server: every operation of its OpenAPI document fuzzed
with schemathesis (valid and invalid requests, some aimed at live sessions), hostile
WebSocket frames, and mangled SDP offers.

What counts against the server: an answer ≥ 500, a request that hangs, an answer the
document does not describe (status, shape or media type), an error logged by the server
(a handler that crashed), and a schema-valid request refused for a reason the document
could have stated. Some refusals no schema can foresee (an SDP that does not negotiate, an
upload that is not the media it claims, a webhook whose host does not resolve): they are
listed apart, with the server's message, as `semantic`.

Needs schemathesis (the ``test`` extra). Used by ``benchmarks/fuzz.py`` (thousands of
requests) and by a small run in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from rtlipsync.logs import DENIED_HANDSHAKE

# Operations whose schema-valid requests can still be refused, and why no schema states it.
SEMANTIC = {
    "POST /offer": "whether an SDP negotiates",
    "POST /avatars": "whether an upload is an image or a video",
    "POST /jobs": "whether an upload is audio; whether a webhook's host resolves",
    "POST /humanaudio": "whether an upload decodes as audio",
    "POST /digital_human/preprocess": "whether a file is a video with a face",
    "POST /digital_human/gen": "whether a file is audio",
}
TIMEOUT = 30.0  # s: a request not answered by then hangs


@dataclass
class FuzzReport:
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # answers the document does not describe
    crashes: list[str] = field(default_factory=list)  # errors the server logged
    semantic: Counter[str] = field(default_factory=Counter)  # refusals no schema states

    def ok(self) -> bool:
        return not (self.server_errors or self.hangs or self.violations or self.crashes)

    def merge(self, other: FuzzReport) -> None:
        self.requests += other.requests
        for name in ("server_errors", "hangs", "violations", "crashes"):
            getattr(self, name).extend(getattr(other, name))
        self.semantic.update(other.semantic)

    def lines(self) -> list[str]:
        out = [
            f"requests {self.requests}",
            f"responses >= 500: {len(self.server_errors)}",
            f"hangs (> {TIMEOUT:g} s): {len(self.hangs)}",
            f"schema violations: {len(self.violations)}",
            f"server errors logged: {len(self.crashes)}",
            f"semantic refusals (not counted): {sum(self.semantic.values())}",
        ]
        for what in ("server_errors", "hangs", "violations", "crashes"):
            out += [f"  {what}: {item}" for item in sorted(set(getattr(self, what)))[:20]]
        out += [f"  semantic: {n} x {reason}" for reason, n in self.semantic.most_common(12)]
        return out


class ErrorLog(logging.Handler):
    """Collects the server's own error records (a route or socket handler that crashed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == DENIED_HANDSHAKE:  # (a 401 at a WebSocket's handshake)
            return
        self.records.append(f"{record.name}: {record.getMessage()[:200]}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[ErrorLog]:
        """Collect while inside (enter it after the server started: uvicorn's start sets
        its loggers' handlers anew)."""
        # (uvicorn's loggers do not propagate: "Exception in ASGI application" is its own)
        loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


class LiveSessions:
    """A few WebSocket sessions kept open (and reopened when fuzzing closes one), read in a
    thread of their own, so fuzzed requests can name sessions that exist."""

    def __init__(self, base: str, count: int = 2, token: str | None = None) -> None:
        self.url = base.replace("http://", "ws://") + "/ws?mode=repeat" + _query(token)
        self.count = count
        self._ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._keep()), daemon=True)

    def __enter__(self) -> LiveSessions:
        self._thread.start()
        deadline = time.monotonic() + 30
        while len(self._ids) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError("the fuzzed server opened no WebSocket session")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def ids(self) -> list[int]:
        return list(self._ids)

    async def _keep(self) -> None:
        slots = [asyncio.create_task(self._one()) for _ in range(self.count)]
        await asyncio.to_thread(self._stop.wait)
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)

    async def _one(self) -> None:
        import websockets

        while not self._stop.is_set():
            sid = None
            try:
                async with websockets.connect(self.url, max_size=None) as ws:
                    async for message in ws:
                        if sid is None and isinstance(message, str):
                            sid = json.loads(message).get("sessionid")
                            if sid is not None:
                                self._ids.append(sid)
            except (OSError, websockets.WebSocketException):
                await asyncio.sleep(0.2)
            finally:
                if sid in self._ids:
                    self._ids.remove(sid)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _query(token: str | None, first: bool = False) -> str:
    return f"{'?' if first else '&'}token={token}" if token else ""


def fuzz_api(
    base: str, examples: int, sessions: LiveSessions, seed: int = 0, token: str | None = None
) -> FuzzReport:
    """Every operation, ``examples`` valid and ``examples`` invalid requests each (with the
    server's access ``token``, when it has one)."""
    import hypothesis
    import schemathesis
    from schemathesis import checks as st_checks
    from schemathesis.core.failures import FailureGroup

    report = FuzzReport()
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=_headers(token))
    turn = itertools.count()
    positive_checks = [
        st_checks.not_a_server_error,
        st_checks.status_code_conformance,
        st_checks.content_type_conformance,
        st_checks.response_schema_conformance,
        st_checks.response_headers_conformance,
        st_checks.positive_data_acceptance,
    ]
    negative_checks = positive_checks[:-1] + [st_checks.negative_data_rejection]
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            checks = positive_checks if mode.value == "positive" else negative_checks
            live = sessions if mode.value == "positive" else None  # (an invalid id stays so)
            test = _one_case(report, base, label, checks, live, turn, FailureGroup, token)
            fuzzed = hypothesis.seed(seed)(
                hypothesis.settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.generate],
                )(hypothesis.given(case=operation.as_strategy(generation_mode=mode))(test))
            )
            try:
                fuzzed()
            except hypothesis.errors.Unsatisfiable:
                pass  # no invalid request exists (an operation without parameters)
    return report


def _one_case(
    report: FuzzReport,
    base: str,
    label: str,
    checks: list[Any],
    sessions: LiveSessions | None,
    turn: Iterator[int],
    failure_group: type[Exception],
    token: str | None = None,
) -> Any:
    """The test hypothesis runs on each generated case of one operation."""

    def run(case: Any) -> None:
        if sessions is not None:
            _aim_at_live_sessions(case, sessions.ids(), next(turn))
        report.requests += 1
        try:
            response = case.call(base_url=base, timeout=TIMEOUT, headers=_headers(token))
        except Exception as exc:  # noqa: BLE001 - requests' timeouts and resets
            kind = type(exc).__name__
            target = report.hangs if "Timeout" in kind else report.server_errors
            target.append(f"{label}: {kind}")
            return
        try:
            case.validate_response(response, checks=checks)
        except failure_group as group:
            _sort(report, label, group.exceptions, response)  # type: ignore[attr-defined]
        except AssertionError as failure:
            _sort(report, label, [failure], response)

    return run


def _aim_at_live_sessions(case: Any, live: list[int], turn: int) -> None:
    """Every other request that names a session names a live one (random ids answer 404)."""
    if not live or turn % 2:
        return
    sid = live[turn // 2 % len(live)]
    if isinstance(case.body, dict) and "sessionid" in case.body:
        case.body["sessionid"] = sid
    if case.path_parameters and "session_id" in case.path_parameters:
        case.path_parameters["session_id"] = sid


def _sort(report: FuzzReport, label: str, failures: Any, response: Any) -> None:
    for failure in failures:
        title = getattr(failure, "title", type(failure).__name__)
        code = response.status_code
        if "server error" in title.lower() or code >= 500:
            report.server_errors.append(f"{label}: {code}")
        elif "rejected" in title.lower() and label in SEMANTIC and code in (400, 415):
            try:
                msg = str(response.json().get("msg", ""))[:60]
            except ValueError:
                msg = response.text[:60]
            report.semantic[f"{label} {code}: {msg}"] += 1
        else:
            report.violations.append(f"{label}: {title} ({code})")


def fuzz_sockets(base: str, seed: int = 0, token: str | None = None) -> FuzzReport:
    """Hostile frames on the two WebSockets: after each, the socket still answers a probe
    (a message it must refuse) or was closed cleanly, and the server is still healthy."""
    return asyncio.run(_fuzz_sockets(base, random.Random(seed), token))


HOSTILE_FRAMES: list[str | bytes] = [
    "[" * 100_000 + "]" * 100_000,  # nested past any parser's recursion limit
    '{"type": "say", "text": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"sessionid": [1, 2], "text": "x"}',
    '{"sessionid": null, "text": "x"}',
    '{"sessionid": 1e999, "text": "x"}',
    '{"sessionid": "0x10", "text": "x"}',
    '{"sessionid": true, "text": "x"}',
    '{"type": 5}',
    '{"type": "say", "text": {"a": 1}}',
    '{"type": "chat", "interrupt": "yes"}',
    '{"type": "persona", "text": null}',
    '{"type": "unknown"}',
    "not json at all",
    "{",
    '"a string"',
    "\u0000\u0001\u202e",
    b"",
    b"\x00",
    b"\x01\x02\x03",  # an odd number of PCM bytes
    bytes(64_000),  # two seconds of silence at once
    "x" * 900_000,
]


async def _fuzz_sockets(base: str, rng: random.Random, token: str | None) -> FuzzReport:
    import websockets

    report = FuzzReport()
    ws_base = base.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=_headers(token)) as http:
        for path in ("/ws?mode=repeat" + _query(token), "/humanecho" + _query(token, True)):
            frames = list(HOSTILE_FRAMES)
            rng.shuffle(frames)
            for frame in frames:
                report.requests += 1
                what = f"WS {path.split('?')[0]} {frame[:24]!r}"
                try:
                    async with websockets.connect(ws_base + path, max_size=None) as ws:
                        if path.startswith("/ws"):
                            await _until_text(ws)  # the session message
                        await ws.send(frame)
                        await ws.send(PROBE)
                        if not await _refused_probe(ws):
                            report.violations.append(f"{what}: the socket stopped answering")
                except websockets.ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd else None
                    if code not in (1000, 1003, 1007, 1008, 1009):
                        report.server_errors.append(f"{what}: closed with {code}")
                except TimeoutError:
                    report.hangs.append(what)
                if (await http.get("/health")).status_code != 200:
                    report.server_errors.append(f"{what}: the server stopped answering")
    return report


PROBE = '{"type": "no such type", "sessionid": true}'  # refused by either socket


async def _refused_probe(ws: Any) -> bool:
    """Whether the socket answers the probe with an error within 5 s (answers to the
    hostile frame itself may come first)."""
    deadline = time.monotonic() + 5.0
    while (left := deadline - time.monotonic()) > 0:
        text = await _until_text(ws, left)
        if text is None:
            return False
        reply = json.loads(text)
        if "no such type" in str(reply.get("msg")) or "sessionid must be" in str(reply.get("msg")):
            return True
    return False


async def _until_text(ws: Any, timeout: float = 10.0) -> str | None:
    """The next text message (frames skipped), or None if none comes in ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            return None
        if isinstance(message, str):
            return message
    return None


def fuzz_offers(base: str, count: int, seed: int = 0, token: str | None = None) -> FuzzReport:
    """``count`` real offers mangled (lines dropped, repeated, cut, numbers blown up, bytes
    flipped), each answered below 500 in time; an accepted one is closed again."""
    return asyncio.run(_fuzz_offers(base, count, random.Random(seed), token))


async def real_offer() -> str:
    """An offer as a real aiortc peer makes it (receive video, send and receive audio)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def mangle(sdp: str, rng: random.Random) -> str:
    lines = sdp.split("\r\n")
    kind = rng.randrange(8)
    if kind == 0:  # drop lines
        for _ in range(rng.randint(1, 5)):
            lines.pop(rng.randrange(len(lines)))
    elif kind == 1:  # repeat a media section many times
        start = next(i for i, line in enumerate(lines) if line.startswith("m="))
        lines += lines[start:] * rng.randint(2, 60)
    elif kind == 2:  # cut anywhere
        return sdp[: rng.randrange(len(sdp))]
    elif kind == 3:  # blow numbers up
        return "".join(
            str(rng.choice([-1, 0, 2**63, 10**40])) if c.isdigit() and rng.random() < 0.1 else c
            for c in sdp
        )
    elif kind == 4:  # flip characters
        chars = list(sdp)
        for _ in range(rng.randint(1, 40)):
            chars[rng.randrange(len(chars))] = chr(rng.choice([0, 10, 13, 0x202E, 0xFFFF, 65]))
        return "".join(chars)
    elif kind == 5:  # shuffle
        rng.shuffle(lines)
    elif kind == 6:  # a very long attribute
        lines.insert(rng.randrange(1, len(lines)), "a=" + "x" * rng.randint(1000, 200_000))
    else:  # unknown codecs and directions
        lines = [
            line.replace("VP8", "XYZ").replace("opus", "?").replace("recvonly", "sendonly")
            for line in lines
        ]
    return "\r\n".join(lines)


async def _fuzz_offers(base: str, count: int, rng: random.Random, token: str | None) -> FuzzReport:
    report = FuzzReport()
    sdp = await real_offer()
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT, headers=_headers(token)) as http:
        for _ in range(count):
            report.requests += 1
            body = {"sdp": mangle(sdp, rng), "type": "offer", "mode": "repeat"}
            try:
                r = await http.post("/offer", json=body)
            except httpx.TimeoutException:
                report.hangs.append("POST /offer (mangled SDP)")
                continue
            except httpx.TransportError as exc:
                size = len(body["sdp"])
                report.server_errors.append(f"POST /offer (mangled SDP, {size} chars): {exc!r}")
                continue
            if r.status_code >= 500:
                report.server_errors.append(f"POST /offer (mangled SDP): {r.status_code}")
            elif r.status_code == 200:
                await http.post("/close", json={"sessionid": r.json()["sessionid"]})
            elif not isinstance(r.json().get("msg"), str):
                report.violations.append(f"POST /offer (mangled SDP): {r.status_code} {r.text}")
    return report


def fuzz_gates(base: str, token: str) -> FuzzReport:
    """Without the access token: every operation but the public ones answers 401, and so
    does every WebSocket (at its handshake). (``token`` only fetches the document.)"""
    import websockets

    from rtlipsync.server.access import PUBLIC

    report = FuzzReport()
    with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        paths = http.get("/openapi.json", headers=_headers(token)).json()["paths"]
        for path, operations in paths.items():
            concrete = path.replace("{name}", "default").replace("{session_id}", "0")
            concrete = concrete.replace("{task_id}", "x").replace("{job_id}", "x")
            for method in operations:
                report.requests += 1
                r = http.request(method.upper(), concrete, json={})
                if (r.status_code == 401) == (path in PUBLIC):
                    report.violations.append(f"{method.upper()} {path}: {r.status_code}")

    async def sockets() -> None:
        for path in ("/ws", "/humanecho"):
            report.requests += 1
            try:
                async with websockets.connect(base.replace("http://", "ws://") + path):
                    report.violations.append(f"WS {path}: accepted without the token")
            except websockets.InvalidStatus as refused:
                if refused.response.status_code != 401:
                    report.violations.append(f"WS {path}: {refused.response.status_code}")

    asyncio.run(sockets())
    return report
