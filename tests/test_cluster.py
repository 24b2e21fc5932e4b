"""The cluster: placement by free capacity, sessions hosted by Ray actors, a worker's death.

The Ray tests run a local Ray with logical resources (two "GPUs" that are only counted), two
session workers each claiming one, and the gateway in front of them on a loopback port; real
aiortc peers open sessions through the gateway and receive their media from the workers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from rtlipsync.cluster.placement import ClusterFull, WorkerLoad, capacity_for, choose

T = TypeVar("T")


def test_a_new_session_goes_to_the_worker_with_the_most_free_places() -> None:
    workers = [WorkerLoad("a", 4, 3), WorkerLoad("b", 4, 1), WorkerLoad("c", 2, 0)]
    assert choose(workers) == "b"  # 3 free against 1 and 2
    # Equal free places: the one with fewer sessions (the smaller host is not filled first
    # only by name), then the name.
    assert choose([WorkerLoad("a", 4, 2), WorkerLoad("b", 2, 0)]) == "b"
    assert choose([WorkerLoad("b", 2, 0), WorkerLoad("a", 2, 0)]) == "a"
    # A dead worker takes nothing, however empty.
    assert choose([WorkerLoad("a", 9, 0, alive=False), WorkerLoad("b", 2, 1)]) == "b"


def test_a_full_cluster_is_refused_with_a_reason() -> None:
    with pytest.raises(ClusterFull, match=r"every session worker is full \(3 sessions on 2"):
        choose([WorkerLoad("a", 2, 2), WorkerLoad("b", 1, 1)])
    with pytest.raises(ClusterFull, match="no session worker is running"):
        choose([WorkerLoad("a", 2, 0, alive=False)])


def test_capacity_is_declared_in_sessions_or_a_frame_budget() -> None:
    assert capacity_for(sessions=3) == 3
    assert capacity_for(fps_budget=160) == 6  # 6 sessions of 25 fps
    with pytest.raises(ValueError, match="cannot hold one 25 fps session"):
        capacity_for(fps_budget=20)
    with pytest.raises(ValueError, match="declare"):
        capacity_for()


def test_the_gateway_asks_for_the_access_token_as_a_server_does() -> None:
    from fastapi.testclient import TestClient

    from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway

    token = "a-token-of-sixteen-or-more"
    cluster = Cluster([WorkerSpec("cpu", sessions=1)])  # (not started: no worker needed)
    with TestClient(create_gateway(cluster, started=True, access_token=token)) as client:
        assert client.get("/cluster").status_code == 401
        assert client.post("/offer", json={"sdp": "v=0", "type": "offer"}).status_code == 401
        assert client.get("/health").status_code == 200  # the probe stays open
        shown = client.get("/cluster", headers={"Authorization": f"Bearer {token}"})
        assert shown.status_code == 200 and shown.json()["workers"] == []


ray = pytest.importorskip("ray", reason="the cluster extra is not installed")


def _ray_processes() -> dict[int, str]:
    """Ray's processes on this machine, and the processes the workers start (a recogniser's
    worker process): what a cluster may leave behind."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(mark in cmd for mark in ("ray::", "raylet", "gcs_server", "multiprocessing")):
            found[int(pid)] = cmd[:120]
    return found


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
    from rtlipsync.testing.serving import serving_app

    before = set(_ray_processes())
    home = tmp_path_factory.mktemp("cluster-home")
    env = pytest.MonkeyPatch()
    env.setenv("RTLIPSYNC_HOME", str(home))  # (the gateway prepares the avatar there)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    cluster = Cluster(
        [
            WorkerSpec("gpu-a", sessions=2, gpus=1, cpus=0),
            WorkerSpec("gpu-b", sessions=1, gpus=1, cpus=0),
        ],
        home=str(home),
    )
    try:
        with serving_app(create_gateway(cluster)) as base:
            yield base, cluster
    finally:
        ray.shutdown()
        env.undo()  # the other tests' data root again
    deadline = time.monotonic() + 20
    while set(_ray_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: cmd for pid, cmd in _ray_processes().items() if pid not in before}
    assert not left, f"the cluster left processes running: {left}"


def test_sessions_spread_by_capacity_then_full_then_a_dead_worker_moves_its_client(gateway) -> None:
    from rtlipsync.testing.peers import Receiver
    from rtlipsync.testing.serving import wait_for

    base, cluster = gateway

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            workers = {w["name"]: w for w in (await http.get("/cluster")).json()["workers"]}
            assert set(workers) == {"gpu-a", "gpu-b"}
            assert [workers[n]["capacity"] for n in ("gpu-a", "gpu-b")] == [2, 1]
            # Each worker is its own process (a Ray actor), not the gateway's.
            assert len({w["url"] for w in workers.values()}) == 2

            receivers = [Receiver(microphone=False) for _ in range(3)]
            ids = [await rx.connect(http) for rx in receivers]
            placed = {
                w["name"]: w["sessions"] for w in (await http.get("/cluster")).json()["workers"]
            }
            # Most free first: a (2 free), then a or b at 1 free each (b has fewer sessions).
            assert placed == {"gpu-a": sorted([ids[0], ids[2]]), "gpu-b": [ids[1]]}
            for rx in receivers:  # media comes from the workers
                assert await wait_for(lambda rx=rx: len(rx.video) > 10, 20)

            # Full: refused with the reason, nothing opened.
            full = await http.post("/offer", json={"sdp": "v=0\r\nm=video", "type": "offer"})
            assert full.status_code == 503
            assert "every session worker is full (3 sessions on 2 workers)" in full.json()["msg"]

            # A control request reaches the worker that hosts the session.
            said = await http.post(
                "/human", json={"sessionid": ids[1], "text": "Hello there.", "type": "echo"}
            )
            assert said.status_code == 200, said.text
            speaking = await http.post("/is_speaking", json={"sessionid": ids[1]})
            assert speaking.status_code == 200 and speaking.json()["data"] is True
            # A caller from elsewhere is not this machine's operator at the worker either:
            # without the session's secret, its id controls nothing.
            stranger = await http.post(
                "/is_speaking",
                json={"sessionid": ids[1]},
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            assert stranger.status_code == 403, stranger.text

            # gpu-a dies: its sessions are told to reconnect; gpu-b's session goes on.
            ray.kill(cluster.workers["gpu-a"].actor)

            async def told() -> httpx.Response | None:
                answer = await http.post("/is_speaking", json={"sessionid": ids[0]})
                return answer if answer.status_code == 410 else None

            lost = await until(told)
            assert lost is not None, "the dead worker's session was not told to reconnect"
            assert lost.json()["reconnect"] is True and "POST /offer" in lost.json()["msg"]
            state = (await http.get("/cluster")).json()
            alive = {w["name"]: w["alive"] for w in state["workers"]}
            assert alive == {"gpu-a": False, "gpu-b": True}
            before = len(receivers[1].video)
            await asyncio.sleep(1.0)
            assert len(receivers[1].video) - before >= 15  # gpu-b's viewer never noticed

            # gpu-b is full (its one place), so the moved client is refused for now...
            await receivers[0].close()
            refused = await http.post("/offer", json={"sdp": "v=0\r\nm=video", "type": "offer"})
            assert refused.status_code == 503
            # ...and placed on gpu-b once its session has ended there.
            await receivers[1].close()
            await http.post("/close", json={"sessionid": ids[1]})

            async def b_free() -> bool:
                workers = (await http.get("/cluster")).json()["workers"]
                return next(w for w in workers if w["name"] == "gpu-b")["free"] == 1

            assert await until(b_free), "the ended session's place was not freed"
            again = Receiver(microphone=False)
            new_id = await again.connect(http)
            state = (await http.get("/cluster")).json()
            assert [w["sessions"] for w in state["workers"] if w["name"] == "gpu-b"] == [[new_id]]
            assert await wait_for(lambda: len(again.video) > 10, 20)
            await again.close()
            await receivers[2].close()

    asyncio.run(run())


async def until(probe: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
    """Call ``probe`` until it answers something true, or ``timeout`` s; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def test_a_session_placed_while_the_gateway_asks_its_worker_is_not_forgotten() -> None:
    from rtlipsync.cluster import gateway

    async def run() -> None:
        answer: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        class Handle:  # a Ray actor handle's shape: ``handle.sessions.remote()`` is awaitable
            class sessions:  # noqa: N801 - the method's name
                @staticmethod
                def remote() -> asyncio.Future[list[int]]:
                    return answer

        cluster = gateway.Cluster([gateway.WorkerSpec("a", sessions=2)])
        worker = gateway.Worker(cluster.specs[0], Handle(), "http://127.0.0.1:1")
        cluster.workers["a"] = worker
        cluster.opened(worker, 1)
        watching = asyncio.get_running_loop().create_task(cluster.watch())
        await asyncio.sleep(0.05)  # the watcher now waits for the worker's answer
        cluster.opened(worker, 2)  # placed meanwhile: not in the answer being sent
        answer.set_result([])  # session 1 has ended there
        await asyncio.sleep(0.05)
        watching.cancel()
        assert cluster.owner(1) is None and cluster.owner(2) is worker
        assert worker.sessions == {2}

    asyncio.run(run())
