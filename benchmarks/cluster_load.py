"""Load on a cluster: simulated clients against the gateway with two local session workers.

A local Ray with two logical GPUs; two session workers each claim one and declare
``--capacity`` sessions; the gateway is in front on a loopback port (as `serve --cluster`
runs it). ``--clients`` aiortc peers open sessions through the gateway one after another
(each measured from its ``POST /offer`` to its first video frame); those placed speak
without pause for ``--seconds``, and each one's frame rate is counted at its receiver.
Clients beyond the cluster's capacity must be refused with a message (503).

Then one worker is killed (``ray.kill``) while its sessions speak. Each of its clients polls
its session as the page does (every 250 ms) until it is told to reconnect (410), then resumes
it (``resume`` and its secret; retried while the cluster is full, until the gateway has
started the worker again); the time from the kill to the resumed session's first frame is
printed, and the other worker's sessions must hold their rate meanwhile.

Last, as many sessions as the cluster holds open over ``/ws`` (the page's transport where
UDP is blocked), whose every frame the gateway relays; their first frame, rate and worst gap.

    .venv/bin/python benchmarks/cluster_load.py [--clients 6] [--capacity 2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import httpx
import numpy as np
import ray
import websockets

from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
from rtlipsync.server import ServerConfig
from rtlipsync.testing.peers import OfferRefused, Receiver
from rtlipsync.testing.serving import serving_app, wait_for
from soak import keep_talking

from _common import machine


async def resume_after_death(
    http: httpx.AsyncClient, sid: int, secret: str, killed: float
) -> tuple[float, float, Receiver]:
    """A client of a dead worker, as the page is: poll until told, then resume. The ms from
    the kill to the 410, and to the resumed session's first frame; its receiver."""
    while (await http.get(f"/sessions/{sid}")).status_code != 410:
        if time.monotonic() - killed > 30:
            raise RuntimeError(f"session {sid} was never told to reconnect")
        await asyncio.sleep(0.25)
    told = (time.monotonic() - killed) * 1000
    rx = Receiver(microphone=False)
    while True:
        try:
            await rx.connect(http, resume=sid, secret=secret)
            break
        except OfferRefused as exc:
            if exc.status != 503 or time.monotonic() - killed > 120:
                raise
            await asyncio.sleep(0.5)
    if not rx.answer.get("resumed"):
        raise RuntimeError(f"session {sid} was not resumed: {rx.answer}")
    if not await wait_for(lambda: rx.video, 30):
        raise RuntimeError(f"the resumed session of {sid} sent no frame in 30 s")
    return told, (rx.video[0] - killed) * 1000, rx


async def failover(
    http: httpx.AsyncClient, cluster: Cluster, placed: list[tuple[Receiver, int, float]]
) -> bool:
    """Kill the first worker while everyone speaks; its clients resume, the others go on."""
    dead = next(iter(cluster.workers.values()))
    mine = [(rx, sid) for rx, sid, _ in placed if sid in dead.sessions]
    others = [rx for rx, sid, _ in placed if sid not in dead.sessions]
    stop = asyncio.Event()
    talkers = [asyncio.create_task(keep_talking(http, sid, stop)) for _, sid, _ in placed]
    await asyncio.sleep(2.0)
    killed = time.monotonic()
    ray.kill(dead.actor)
    results = await asyncio.gather(
        *(resume_after_death(http, sid, rx.answer["secret"], killed) for rx, sid in mine)
    )
    end = time.monotonic()
    talkers += [
        asyncio.create_task(keep_talking(http, int(rx.answer["sessionid"]), stop))
        for _, _, rx in results
    ]
    await asyncio.sleep(10.0)  # and then: every session, the resumed ones too
    after = time.monotonic()
    stop.set()
    await asyncio.gather(*talkers, return_exceptions=True)  # (the dead ones' fail)

    def rate(rx: Receiver, start: float, stop: float) -> float:
        return len([t for t in rx.video if start <= t <= stop]) / (stop - start)

    fps = [rate(rx, killed, end) for rx in others]
    settled = [rate(rx, end + 2, after) for rx in [*others, *(rx for _, _, rx in results)]]
    print(f"  worker {dead.spec.name} killed with {len(mine)} speaking sessions:")
    for told, back, _ in results:
        print(f"    told after {told:.0f} ms, resumed and first frame after {back:.0f} ms")
    print(f"    the other worker's sessions meanwhile: {' '.join(f'{f:.1f}' for f in fps)} fps")
    print(f"    every session 2-10 s after: {' '.join(f'{f:.1f}' for f in settled)} fps")
    for rx, _ in mine:
        await rx.close()
    for _, _, rx in results:
        await http.post("/close", json={"sessionid": int(rx.answer["sessionid"])})
        await rx.close()
    return bool(results) and min(settled) >= 24.5


async def over_websockets(http: httpx.AsyncClient, base: str, count: int, seconds: float) -> bool:
    """``count`` sessions over ``/ws`` through the gateway (the page's way where UDP is
    blocked: every frame crosses the gateway), speaking without pause: ms from opening to
    the first frame, and the frame rate and worst gap each client received."""
    url = base.replace("http://", "ws://") + "/ws"
    stop = asyncio.Event()

    async def client() -> tuple[float, float, float]:
        opened = time.monotonic()
        async with websockets.connect(url, compression=None, max_size=None) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") != "session":
                raise RuntimeError(f"no WebSocket session: {hello}")
            talking = asyncio.create_task(keep_talking(http, int(hello["sessionid"]), stop))
            frames: list[float] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                message = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(message, bytes):
                    frames.append(time.monotonic())
            stop.set()
            await talking
        steady = [t for t in frames if t >= frames[0] + 2]
        gaps = np.diff(steady) * 1000
        fps = (len(steady) - 1) / (steady[-1] - steady[0])
        return (frames[0] - opened) * 1000, fps, float(gaps.max())

    results = await asyncio.gather(*(client() for _ in range(count)))
    print(f"  {count} sessions over /ws through the gateway, speaking {seconds:.0f} s:")
    for first, fps, gap in results:
        print(f"    first frame after {first:.0f} ms, {fps:.1f} fps, worst gap {gap:.0f} ms")
    return all(fps >= 24.5 for _, fps, _ in results)


async def load(base: str, cluster: Cluster, clients: int, seconds: float) -> bool:
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
        moved = await failover(http, cluster, placed)
        for rx, sid, _ in placed:
            await http.post("/close", json={"sessionid": sid})
            await rx.close()
        relayed = await over_websockets(http, base, min(clients, capacity), seconds)
    held = len(placed) == min(clients, capacity) and min(fps) >= 24.5
    return held and moved and relayed


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
            cluster = Cluster(specs, home=home)
            # Every simulated client comes from this machine's one address.
            gates = ServerConfig(max_sessions_per_client=2 * args.clients)
            with serving_app(create_gateway(cluster, gates=gates)) as base:
                ok = asyncio.run(load(base, cluster, args.clients, args.seconds))
        finally:
            ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
