"""Load on a cluster: simulated clients against the gateway with two local session workers.

A local Ray with two logical GPUs; two session workers each claim one and declare
``--capacity`` sessions; the gateway is in front on a loopback port (as `serve --cluster`
runs it). ``--clients`` aiortc peers open sessions through the gateway one after another
(each measured from its ``POST /offer`` to its first video frame); those placed speak
without pause for ``--seconds``, and each one's frame rate is counted at its receiver.
Clients beyond the cluster's capacity must be refused with a message (503).

    .venv/bin/python benchmarks/cluster_load.py [--clients 6] [--capacity 2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import httpx
import numpy as np
import ray

from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
from rtlipsync.testing.peers import OfferRefused, Receiver
from rtlipsync.testing.serving import serving_app, wait_for
from soak import keep_talking

from _common import machine


async def load(base: str, clients: int, seconds: float) -> bool:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        placed: list[tuple[Receiver, int, float]] = []
        refused: list[str] = []
        for _ in range(clients):
            rx = Receiver(microphone=False)
            asked = time.monotonic()
            try:
                sid = await rx.connect(http)
            except OfferRefused as exc:
                refused.append(f"{exc.status}: {exc.msg}")
                await rx.close()
                continue
            if not await wait_for(lambda rx=rx: rx.video, 30):
                raise RuntimeError(f"session {sid} sent no frame in 30 s")
            placed.append((rx, sid, (rx.video[0] - asked) * 1000))
        state = (await http.get("/cluster")).json()
        stop = asyncio.Event()
        talkers = [asyncio.create_task(keep_talking(http, sid, stop)) for _, sid, _ in placed]
        start = time.monotonic()
        await asyncio.sleep(seconds)
        end = time.monotonic()
        stop.set()
        await asyncio.gather(*talkers)
        fps = [
            len([t for t in rx.video if start + 2 <= t <= end]) / (end - start - 2)
            for rx, _, _ in placed
        ]
        first = [ms for _, _, ms in placed]
        capacity = state["capacity"]
        print(f"{clients} clients, cluster capacity {capacity} on {len(state['workers'])} workers")
        for w in state["workers"]:
            print(f"  {w['name']}: {len(w['sessions'])} sessions of {w['capacity']}")
        expected = max(clients - capacity, 0)
        print(f"  placed {len(placed)}, refused {len(refused)} (expected {expected})")
        for why in sorted(set(refused)):
            print(f"    refused with {why}")
        print(f"  /offer -> first frame: p50 {np.median(first):.0f} ms, max {max(first):.0f} ms")
        print(
            f"  fps held while speaking: {' '.join(f'{f:.1f}' for f in fps)} (min {min(fps):.1f})"
        )
        for rx, sid, _ in placed:
            await rx.close()
            await http.post("/close", json={"sessionid": sid})
    return len(placed) == min(clients, capacity) and min(fps) >= 24.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--capacity", type=int, default=2, help="sessions per worker")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as home:
        os.environ["RTLIPSYNC_HOME"] = home
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        specs = [WorkerSpec(f"gpu-{k}", sessions=args.capacity, gpus=1, cpus=0) for k in "ab"]
        try:
            with serving_app(create_gateway(Cluster(specs, home=home))) as base:
                ok = asyncio.run(load(base, args.clients, args.seconds))
        finally:
            ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
