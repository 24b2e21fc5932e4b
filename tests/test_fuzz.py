"""A small run of ``benchmarks/fuzz.py``: schemathesis over the OpenAPI document, hostile
WebSocket frames and mangled SDP offers against a live server, which must answer every one
below 500, in time, as its document says, without logging an error."""

from __future__ import annotations

from rtlipsync.server import ServerConfig
from rtlipsync.testing.fuzz import (
    ErrorLog,
    FuzzReport,
    LiveSessions,
    fuzz_api,
    fuzz_offers,
    fuzz_sockets,
)

from conftest import serving


def test_hostile_requests_get_answers_the_document_describes(default_avatar) -> None:
    config = ServerConfig(max_sessions=16, max_sessions_per_client=16, mode="repeat")
    report = FuzzReport()
    with serving(config) as base, ErrorLog().watching() as errors:
        with LiveSessions(base) as live:
            report.merge(fuzz_api(base, 4, live, seed=1))
        report.merge(fuzz_sockets(base, seed=1))
        report.merge(fuzz_offers(base, 30, seed=0))  # (its 23rd broke the old code)
    report.crashes += errors.records
    assert report.requests > 200
    assert report.ok(), "\n".join(report.lines())


def test_an_offer_without_its_first_media_id_is_refused_not_a_500(default_avatar) -> None:
    """Found by the fuzzer: aiortc half-applies such an offer, and closing the half-made
    peer raised too, so the refusal became a 500."""
    import asyncio

    import httpx

    from rtlipsync.testing.fuzz import real_offer

    sdp = asyncio.run(real_offer())
    for missing in ("a=mid:0", "m=video"):
        lines = sdp.split("\r\n")
        lines.pop(next(i for i, line in enumerate(lines) if line.startswith(missing)))
        with serving() as base:
            r = httpx.post(f"{base}/offer", json={"sdp": "\r\n".join(lines), "type": "offer"})
            assert r.status_code == 400, r.text
            assert "cannot negotiate" in r.json()["msg"]
            assert httpx.get(f"{base}/health").status_code == 200
