"""Hostile clients against a live server (issue: nothing hangs, nothing leaks).

Schemathesis over the OpenAPI document (valid and invalid requests for every operation,
half of those naming a session aimed at live ones), hostile WebSocket frames on ``/ws`` and
``/humanecho``, and mangled real SDP offers. Goal: 0 answers >= 500, 0 hangs, 0 schema
violations, 0 errors logged by the server. Prints the figures; exits 1 if a goal is missed.

    .venv/bin/python benchmarks/fuzz.py [--examples 25] [--offers 200] [--seed 0] [--token]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25, help="per operation and mode")
    parser.add_argument("--offers", type=int, default=200, help="mangled SDP offers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--token",
        action="store_true",
        help="serve with an access token: fuzz with it, and check every route refuses without",
    )
    args = parser.parse_args()
    os.environ.setdefault("RTLIPSYNC_HOME", tempfile.mkdtemp(prefix="rtlipsync-fuzz-"))

    from rtlipsync.face.avatar import ensure_default_avatar
    from rtlipsync.server import ServerConfig
    from rtlipsync.testing.fuzz import (
        ErrorLog,
        FuzzReport,
        LiveSessions,
        fuzz_api,
        fuzz_gates,
        fuzz_offers,
        fuzz_sockets,
    )
    from rtlipsync.testing.serving import serving

    from _common import machine

    logging.getLogger("rtlipsync").setLevel(logging.INFO)
    ensure_default_avatar()
    token = "fuzz-token-0123456789abcdef" if args.token else None
    config = ServerConfig(
        max_sessions=16, max_sessions_per_client=16, mode="repeat", access_token=token
    )
    started = time.perf_counter()
    report = FuzzReport()
    with serving(config) as base, ErrorLog().watching() as errors:
        with LiveSessions(base, token=token) as live:
            report.merge(fuzz_api(base, args.examples, live, args.seed, token))
        report.merge(fuzz_sockets(base, args.seed, token))
        report.merge(fuzz_offers(base, args.offers, args.seed, token))
        if token is not None:
            report.merge(fuzz_gates(base, token))
    report.crashes += errors.records
    print(machine())
    print(f"fuzz: {time.perf_counter() - started:.0f} s, seed {args.seed}")
    print("\n".join(report.lines()))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
