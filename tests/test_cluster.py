"""The cluster: placement by free capacity, sessions hosted by Ray actors, a worker's death.

The Ray tests run a local Ray with logical resources (two "GPUs" that are only counted), two
session workers each claiming one, and the gateway in front of them on a loopback port; real
aiortc peers open sessions through the gateway and receive their media from the workers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from rtlipsync.cluster.placement import ClusterFull, WorkerLoad, capacity_for, choose
from rtlipsync.testing.fake_openai import FakeOpenAI, Reply

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


def test_the_gateway_has_a_servers_gates() -> None:
    """The token, the Host it answers and the pages that may use it are the gateway's to
    check: it is what clients reach (a worker compares a page's origin with its own address,
    so the relay does not pass the page's on)."""
    from fastapi.testclient import TestClient

    from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
    from rtlipsync.server import ServerConfig

    token = "a-token-of-sixteen-or-more"
    cluster = Cluster([WorkerSpec("cpu", sessions=1)])  # (not started: no worker needed)
    app = create_gateway(cluster, started=True, gates=ServerConfig(access_token=token))
    with TestClient(app, base_url="http://127.0.0.1:8010") as client:
        assert client.get("/cluster").status_code == 401
        assert client.post("/offer", json={"sdp": "v=0", "type": "offer"}).status_code == 401
        assert client.get("/health").status_code == 200  # the probe stays open
        auth = {"Authorization": f"Bearer {token}"}
        shown = client.get("/cluster", headers=auth)
        assert shown.status_code == 200 and shown.json()["workers"] == []
        # Another site's page, and a name rebound to this machine, reach nothing.
        offer = {"sdp": "v=0\r\nm=video", "type": "offer"}
        page = {**auth, "Origin": "https://evil.example"}
        foreign = client.post("/offer", json=offer, headers=page)
        assert foreign.status_code == 403 and "not allowed here" in foreign.json()["msg"]
        rebound = client.get("/cluster", headers={**auth, "Host": "evil.example"})
        assert rebound.status_code == 400
        # Its own page passes (and finds no worker to place it on).
        own = client.post("/offer", json=offer, headers={**auth, "Origin": "http://127.0.0.1:8010"})
        assert own.status_code == 503 and "no session worker" in own.json()["msg"]


def test_metrics_merge_every_workers_figures_under_a_worker_label() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from rtlipsync.cluster.gateway import Cluster, Worker, WorkerSpec, cluster_metrics
    from rtlipsync.metrics import Metrics

    cluster = Cluster([WorkerSpec("a", sessions=2), WorkerSpec("b", sessions=1)])
    scraped = {}
    for spec, live in zip(cluster.specs, (2, 1), strict=True):
        worker = cluster.workers[spec.name] = Worker(spec, None, "http://127.0.0.1:1")
        for sid in range(live):
            cluster.opened(worker, sid * 2 + live, "secret")
        own = Metrics()  # what that worker's /metrics says
        own.sessions.set(live)
        own.turns.labels("chat").inc(live)
        own.first_frame.labels("chat").observe(0.2 * live)
        scraped[spec.name] = generate_latest(own.registry).decode()
    scraped["b"] += "garbage {"  # a garbled answer costs at most that worker's figures
    text = cluster_metrics(cluster, scraped).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # (it parses)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("rtlipsync_worker_sessions", (("worker", "a"),))] == 2
    assert samples[("rtlipsync_worker_capacity", (("worker", "b"),))] == 1
    assert samples[("rtlipsync_worker_alive", (("worker", "b"),))] == 1
    assert samples[("rtlipsync_sessions", (("worker", "a"),))] == 2
    assert samples[("rtlipsync_turns_total", (("mode", "chat"), ("worker", "a")))] == 2
    assert (
        samples[("rtlipsync_turn_first_frame_seconds_count", (("mode", "chat"), ("worker", "a")))]
        == 1
    )
    assert families["rtlipsync_turn_first_frame_seconds"].type == "histogram"
    assert text.count("# TYPE rtlipsync_sessions ") == 1  # one family, every worker's samples


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
        if "resource_tracker" in cmd and _parent(int(pid)) == os.getpid():
            continue  # (this process's own, which lives as long as it does)
        if any(mark in cmd for mark in ("ray::", "raylet", "gcs_server", "multiprocessing")):
            found[int(pid)] = cmd[:120]
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # (after the command's name: state, ppid)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
    from rtlipsync.testing.serving import serving_app

    before = set(_ray_processes())
    home = tmp_path_factory.mktemp("cluster-home")
    env = pytest.MonkeyPatch()
    env.setenv("RTLIPSYNC_HOME", str(home))  # (the gateway prepares the avatar there)
    llm = FakeOpenAI([Reply(["[neutral] Nice to meet you, Ada."])])  # then a default reply
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with serving_app(llm.app()) as llm_url:
            config = home / "rtlipsync.yaml"  # chat mode: the workers' language model
            config.write_text(f"llm:\n  base_url: {llm_url}/v1\n  model: fake\n  api_key: x\n")
            cluster = Cluster(
                [
                    WorkerSpec("gpu-a", sessions=2, gpus=1, cpus=0),
                    WorkerSpec("gpu-b", sessions=1, gpus=1, cpus=0),
                ],
                home=str(home),
                config=str(config),
            )
            with serving_app(create_gateway(cluster)) as base:
                yield base, cluster, llm
    finally:
        ray.shutdown()
        env.undo()  # the other tests' data root again
    deadline = time.monotonic() + 20
    while set(_ray_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: cmd for pid, cmd in _ray_processes().items() if pid not in before}
    assert not left, f"the cluster left processes running: {left}"


def test_sessions_spread_by_capacity_then_full_then_a_dead_worker_moves_its_client(gateway) -> None:
    from rtlipsync.testing.peers import OfferRefused, Receiver
    from rtlipsync.testing.serving import wait_for

    base, cluster, llm = gateway

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
            # Each worker draws ids from its own share: two workers never open the same one.
            assert [i % 2 for i in ids] == [0, 1, 0]
            for rx in receivers:  # media comes from the workers
                assert await wait_for(lambda rx=rx: len(rx.video) > 10, 20)

            # Full: refused with the reason, nothing opened.
            full = await http.post("/offer", json={"sdp": "v=0\r\nm=video", "type": "offer"})
            assert full.status_code == 503
            assert "every session worker is full (3 sessions on 2 workers)" in full.json()["msg"]

            # A control request reaches the worker that hosts the session, and so does one
            # that names its session in the path (the page's state poll).
            said = await http.post(
                "/human", json={"sessionid": ids[1], "text": "Hello there.", "type": "echo"}
            )
            assert said.status_code == 200, said.text
            speaking = await http.post("/is_speaking", json={"sessionid": ids[1]})
            assert speaking.status_code == 200 and speaking.json()["data"] is True
            for sid in ids:
                state = await http.get(f"/sessions/{sid}")
                assert state.status_code == 200 and state.json()["sessionid"] == sid
            # A caller from elsewhere is not this machine's operator at the worker either:
            # without the session's secret, its id controls nothing.
            stranger = await http.post(
                "/is_speaking",
                json={"sessionid": ids[1]},
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            assert stranger.status_code == 403, stranger.text

            # A conversation on gpu-a, which the gateway keeps a copy of.
            chat = {"sessionid": ids[0], "text": "My name is Ada.", "type": "chat"}
            assert (await http.post("/human", json=chat)).status_code == 200

            async def remembered() -> bool:
                state = cluster.workers["gpu-a"].states.get(ids[0], {})
                return len(state.get("memory", [])) == 2

            assert await until(remembered), "the gateway holds no copy of the conversation"

            # Per-worker figures: the gateway's view, and each worker's own, labelled.
            metrics = (await http.get("/metrics")).text
            assert 'rtlipsync_worker_sessions{worker="gpu-a"} 2.0' in metrics
            assert 'rtlipsync_worker_sessions{worker="gpu-b"} 1.0' in metrics
            assert 'rtlipsync_sessions{worker="gpu-a"} 2.0' in metrics
            assert 'rtlipsync_sessions{worker="gpu-b"} 1.0' in metrics

            # gpu-a dies: its sessions are told to reconnect; gpu-b's session goes on.
            first_url = cluster.workers["gpu-a"].url
            ray.kill(cluster.workers["gpu-a"].actor)

            async def told() -> httpx.Response | None:
                answer = await http.post("/is_speaking", json={"sessionid": ids[0]})
                return answer if answer.status_code == 410 else None

            lost = await until(told)
            assert lost is not None, "the dead worker's session was not told to reconnect"
            assert lost.json()["reconnect"] is True and "POST /offer" in lost.json()["msg"]
            assert (await http.get(f"/sessions/{ids[2]}")).status_code == 410
            state = (await http.get("/cluster")).json()
            alive = {w["name"]: w["alive"] for w in state["workers"]}
            assert alive == {"gpu-a": False, "gpu-b": True}
            before = len(receivers[1].video)
            await asyncio.sleep(1.0)
            assert len(receivers[1].video) - before >= 15  # gpu-b's viewer never noticed
            await receivers[0].close()
            await receivers[2].close()

            # Only the session's own client may resume it.
            offer = {"sdp": "v=0\r\nm=video", "type": "offer", "resume": ids[0]}
            thief = await http.post("/offer", json={**offer, "secret": "not-it"})
            assert thief.status_code == 403 and "not yours to resume" in thief.json()["msg"]

            # The client resumes: gpu-b is full, so it is placed once gpu-a is started again,
            # and goes on with the same conversation.
            again = Receiver(microphone=False)
            secret = receivers[0].answer["secret"]

            async def resumed() -> int | None:
                try:
                    return await again.connect(http, resume=ids[0], secret=secret)
                except OfferRefused as exc:
                    assert exc.status == 503, exc  # full until gpu-a is back
                    return None

            new_id = await until(resumed, 60)
            assert new_id, "the moved client was never placed again"
            assert again.answer["resumed"] is True
            state = {w["name"]: w for w in (await http.get("/cluster")).json()["workers"]}
            assert state["gpu-a"]["alive"] and state["gpu-a"]["restarts"] == 1
            assert state["gpu-a"]["url"] != first_url  # a new actor, on a port of its own
            assert state["gpu-a"]["sessions"] == [new_id] and new_id % 2 == 0
            assert await wait_for(lambda: len(again.video) > 10, 20)
            ask = {"sessionid": new_id, "text": "What is my name?", "type": "chat"}
            assert (await http.post("/human", json=ask)).status_code == 200
            assert await wait_for(lambda: len(llm.requests) == 2, 20)
            assert llm.requests[1]["messages"][1:] == [
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Nice to meet you, Ada."},
                {"role": "user", "content": "What is my name?"},
            ]
            # Resumed once: the same id again opens a session of its own.
            twice = Receiver(microphone=False)
            await twice.connect(http, resume=ids[0], secret=secret)
            assert twice.answer["resumed"] is False
            await twice.close()

            # A closed session frees its place at once (not when the gateway next looks).
            assert (await http.post("/close", json={"sessionid": ids[1]})).status_code == 200
            workers = (await http.get("/cluster")).json()["workers"]
            assert next(w for w in workers if w["name"] == "gpu-b")["free"] == 1
            await receivers[1].close()
            # One that ends without a word (its client went) frees its place within seconds.
            await again.close()

            async def a_free() -> bool:
                workers = (await http.get("/cluster")).json()["workers"]
                return next(w for w in workers if w["name"] == "gpu-a")["free"] == 2

            assert await until(a_free), "the ended session's place was not freed"

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
        answer: asyncio.Future[dict[int, dict | None]] = asyncio.get_running_loop().create_future()

        class Handle:  # a Ray actor handle's shape: ``handle.states.remote()`` is awaitable
            class states:  # noqa: N801 - the method's name
                @staticmethod
                def remote(full: bool = False) -> asyncio.Future[dict[int, dict | None]]:
                    return answer

        cluster = gateway.Cluster([gateway.WorkerSpec("a", sessions=2)])
        worker = gateway.Worker(cluster.specs[0], Handle(), "http://127.0.0.1:1")
        cluster.workers["a"] = worker
        cluster.opened(worker, 1, "secret-1")
        watching = asyncio.get_running_loop().create_task(cluster.watch())
        await asyncio.sleep(0.05)  # the watcher now waits for the worker's answer
        cluster.opened(worker, 2, "secret-2")  # placed meanwhile: not in the answer being sent
        answer.set_result({})  # session 1 has ended there
        await asyncio.sleep(0.05)
        watching.cancel()
        assert cluster.owner(1) is None and cluster.owner(2) is worker
        assert worker.sessions == {2}

    asyncio.run(run())


def test_a_full_cluster_queues_new_sessions_in_order_when_asked() -> None:
    """With a queue wait, a session that finds every worker full waits for a place, first
    come first placed, and is refused with the reason once the wait is over."""
    from rtlipsync.cluster import gateway

    async def run() -> None:
        live: dict[int, None] = {}  # the sessions the worker reports

        class Handle:  # a Ray actor handle's shape: ``handle.states.remote()`` is awaitable
            class states:  # noqa: N801 - the method's name
                @staticmethod
                async def remote(full: bool = False) -> dict[int, None]:
                    return dict(live)

        cluster = gateway.Cluster([gateway.WorkerSpec("a", sessions=1)], queue_wait=10)
        worker = gateway.Worker(cluster.specs[0], Handle(), "http://127.0.0.1:1")
        cluster.workers["a"] = worker
        order: list[int] = []

        async def place(sid: int) -> None:
            async with cluster.placement() as host:
                order.append(sid)
                live[sid] = None
                cluster.opened(host, sid, f"secret-{sid}")

        await place(1)
        watching = asyncio.get_running_loop().create_task(cluster.watch())
        try:
            waiting = [asyncio.get_running_loop().create_task(place(sid)) for sid in (2, 3)]
            await asyncio.sleep(1.5)  # (a look at the worker in between: nothing ended)
            assert order == [1] and cluster.describe()["placing"] == 2
            del live[1]  # session 1 ends: the first to come gets its place
            await asyncio.wait_for(waiting[0], 5)
            assert order == [1, 2] and not waiting[1].done()
            del live[2]
            await asyncio.wait_for(waiting[1], 5)
            assert order == [1, 2, 3] and cluster.describe()["placing"] == 0

            cluster.queue_wait = 0.3  # now the wait runs out
            with pytest.raises(ClusterFull, match=r"every session worker is full .*waited 0.3 s"):
                await place(4)
            cluster.queue_wait = 0  # no queue: refused at once
            started = time.monotonic()
            with pytest.raises(ClusterFull, match="full") as refused:
                await place(4)
            assert time.monotonic() - started < 0.1 and "waited" not in str(refused.value)
        finally:
            watching.cancel()

        # One client address cannot take every place of the cluster (a worker cannot tell
        # clients apart: all of them reach it from the gateway).
        roomy = gateway.Cluster([gateway.WorkerSpec("a", sessions=3)])
        roomy.workers["a"] = gateway.Worker(roomy.specs[0], Handle(), "http://127.0.0.1:1")
        roomy.per_client = 1
        async with roomy.placement("203.0.113.9") as host:
            roomy.opened(host, 5, "secret-5", "203.0.113.9")
        with pytest.raises(gateway.TooManySessions, match="1 sessions are open from your"):
            async with roomy.placement("203.0.113.9"):
                pass
        async with roomy.placement("198.51.100.7") as host:  # another client has room
            assert host is roomy.workers["a"]

    asyncio.run(run())


def test_a_session_goes_where_its_avatar_is() -> None:
    """Hosts with data roots of their own hold different avatars: a session (and a request
    about an avatar) goes to a worker whose host has it, the freest of those."""
    from rtlipsync.cluster import gateway

    cluster = gateway.Cluster(
        [gateway.WorkerSpec("a", sessions=1), gateway.WorkerSpec("b", sessions=4)]
    )
    a, b = (gateway.Worker(spec, None, "http://127.0.0.1:1") for spec in cluster.specs)
    cluster.workers.update(a=a, b=b)
    a.avatars, b.avatars = frozenset({"default", "grace"}), frozenset({"default"})
    assert cluster.place("grace") is a  # although b has more room
    assert cluster.place(None) is b and cluster.place("default") is b  # every host has it
    assert cluster.place("nobody") is b  # none has it: the freest (it says it is unknown)
    assert cluster.holder("grace") is a and cluster.holder(None) is b
    cluster.opened(a, 2, "secret-2")
    with pytest.raises(ClusterFull, match="full"):
        cluster.place("grace")  # its one host is full
    b.avatars = None  # not read yet: taken to have it
    assert cluster.place("grace") is b


class _ServerHandle:
    """A Ray actor handle's shape over a plain server in this process: ``states.remote()``
    is the worker's own `SessionWorker.states`, and raises Ray's error once ``dead``."""

    def __init__(self, app: object) -> None:
        from rtlipsync.cluster.worker import SessionWorker

        self.dead = False
        worker = SessionWorker.__new__(SessionWorker)  # (its server is already running)
        worker.app, worker._sent = app, {}
        handle = self

        class states:  # noqa: N801 - the method's name
            @staticmethod
            async def remote(full: bool = False) -> dict:
                if handle.dead:
                    raise ray.exceptions.RayActorError()
                return await asyncio.to_thread(worker.states, full)

        self.states = states


def test_websocket_sessions_are_placed_relayed_and_resumed(default_avatar) -> None:
    """Where UDP is blocked the page's session runs over ``/ws``: through the gateway it is
    placed like an offer, its frames and commands pass both ways, ``/humanecho`` reaches the
    session's worker, and when the worker dies the client hears ``reconnect`` and resumes
    with its memory. The workers are plain servers here, reached as a worker's server is."""
    import json

    import websockets

    from rtlipsync.cluster.gateway import Cluster, Worker, WorkerSpec, create_gateway
    from rtlipsync.face.avatar import default_avatar_source
    from rtlipsync.server import ServerConfig, create_app
    from rtlipsync.server.threaded import ThreadedServer
    from rtlipsync.speech.llm import LLMConfig
    from rtlipsync.testing.serving import serving_app
    from test_websocket import frames_for, loud

    llm = FakeOpenAI([Reply(["[neutral] Nice to meet you, Ada."])])

    async def next_text(ws, kind: str) -> dict:  # noqa: ANN001
        while True:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str) and json.loads(message)["type"] == kind:
                return json.loads(message)

    async def run(base: str, cluster: Cluster, handles: dict[str, _ServerHandle], stop_a) -> None:  # noqa: ANN001
        url = base.replace("http://", "ws://")
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            # An avatar uploaded through the gateway: its preparation is asked after on the
            # worker that runs it (each worker has its own tasks), then it is listed.
            face = default_avatar_source().read_bytes()
            files = {"file": ("me.png", face, "image/png")}
            upload = await http.post("/avatars", data={"name": "grace"}, files=files)
            assert upload.status_code == 200, upload.text
            task = upload.json()["task"]
            assert cluster.task_host(task) is cluster.workers["a"]  # (the freest)

            async def prepared() -> dict | None:
                state = (await http.get(f"/tasks/{task}")).json()
                return state if state["state"] in ("done", "failed") else None

            assert (await until(prepared, 60) or {}).get("state") == "done"
            listed = [a["name"] for a in (await http.get("/avatars")).json()["data"]]
            assert sorted(listed) == ["default", "grace"]  # (each name once)
            assert cluster.workers["a"].avatars == {"default", "grace"}

            async with websockets.connect(f"{url}/ws?mode=chat&avatar=grace") as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "session" and "resumed" not in hello
                sid, secret = hello["sessionid"], hello["secret"]
                assert cluster.workers["a"].sessions == {sid}  # a: the most free places
                state = (await http.get(f"/sessions/{sid}")).json()
                assert state["avatar"] == "grace"
                frames = await frames_for(ws, 1.0)  # the worker's frames, relayed
                assert len(frames) >= 20 and frames[-1][1].shape == (512, 512, 3)
                await ws.send(json.dumps({"type": "chat", "text": "My name is Ada."}))

                async def remembered() -> bool:
                    return len(cluster.workers["a"].states.get(sid, {}).get("memory", [])) == 2

                assert await until(remembered), "the gateway holds no copy of the conversation"

                # /humanecho reaches the worker that hosts the session it names.
                async with websockets.connect(f"{url}/humanecho") as echo:
                    said = {"sessionid": sid, "secret": secret, "text": "Hi there."}
                    await echo.send(json.dumps(said))

                    async def speaking() -> bool:
                        asked = {"sessionid": sid, "secret": secret}
                        return (await http.post("/is_speaking", json=asked)).json()["data"]

                    assert await until(speaking), "the echo did not reach the session's worker"
                    # One the gateway does not know goes to a worker, which says what is wrong.
                    await echo.send(json.dumps({"sessionid": 999_999, "text": "Hello?"}))
                    refused = json.loads(await asyncio.wait_for(echo.recv(), 10))
                    assert refused["code"] == -1 and "999999" in refused["msg"], refused

                # Worker a dies: the client is told to reconnect, and how.
                handles["a"].dead = True
                stopping = asyncio.create_task(asyncio.to_thread(stop_a))
                told = await next_text(ws, "reconnect")
                assert told["sessionid"] == sid and "/ws?resume=" in told["msg"]
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
                await stopping
            async with websockets.connect(f"{url}/humanecho?sessionid={sid}") as echo:
                await echo.send("Anyone there?")
                moved = json.loads(await asyncio.wait_for(echo.recv(), 10))
                assert moved["reconnect"] is True

            # Only with its secret; then on worker b, with the same conversation.
            async with websockets.connect(f"{url}/ws?resume={sid}&secret=not-it") as thief:
                refused = json.loads(await thief.recv())
                assert refused["type"] == "error" and refused["status"] == 403
            async with websockets.connect(f"{url}/ws?resume={sid}&secret={secret}") as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "session" and hello["resumed"] is True
                assert hello["mode"] == "chat"  # carried over, not asked for again
                state = (await http.get(f"/sessions/{hello['sessionid']}")).json()
                assert state["avatar"] == "grace"
                assert cluster.workers["b"].sessions == {hello["sessionid"]}
                await ws.send(json.dumps({"type": "chat", "text": "What is my name?"}))

                async def asked() -> bool:
                    return len(llm.requests) == 2

                assert await until(asked), "the resumed session's question never came"
                assert llm.requests[1]["messages"][1:] == [
                    {"role": "user", "content": "My name is Ada."},
                    {"role": "assistant", "content": "Nice to meet you, Ada."},
                    {"role": "user", "content": "What is my name?"},
                ]
                assert any(loud(a) for _, _, a in await frames_for(ws, 3.0))
                # Full (b holds its one place): refused with the reason, told to wait.
                async with websockets.connect(f"{url}/ws") as full:
                    refused = json.loads(await full.recv())
                    assert refused["status"] == 503 and "full" in refused["msg"]
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await full.recv()
                    assert closed.value.rcvd.code == 1013

            # The client left: its session on b ends, and its place is free.
            async def freed() -> bool:
                return not cluster.workers["b"].sessions

            assert await until(freed), "the resumed session's place was not freed"

    with serving_app(llm.app()) as llm_url:
        config = ServerConfig(llm=LLMConfig(base_url=f"{llm_url}/v1", api_key="k"))
        app_a, app_b = create_app(config), create_app(config)
        handles = {"a": _ServerHandle(app_a), "b": _ServerHandle(app_b)}
        cluster = Cluster([WorkerSpec("a", sessions=2), WorkerSpec("b", sessions=1)])
        cluster.restart = False  # (no Ray here to start a worker again)
        server_a = ThreadedServer(app_a, log_level="warning", name="worker-a")
        server_a.start()
        try:
            with serving_app(app_b) as url_b:
                for spec, worker_url in zip(
                    cluster.specs, (f"http://127.0.0.1:{server_a.port}", url_b), strict=True
                ):
                    cluster.workers[spec.name] = Worker(spec, handles[spec.name], worker_url)
                with serving_app(create_gateway(cluster, started=True)) as base:
                    asyncio.run(run(base, cluster, handles, server_a.stop))
        finally:
            server_a.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("transport", ["WebRTC", "WebSocket"])
def test_the_page_goes_on_with_its_conversation_when_its_worker_dies(gateway, transport) -> None:
    """The page polls its session through the gateway; the 410 of a dead worker (or, over
    the WebSocket, the gateway's ``reconnect``) makes it open a new session that resumes the
    old one, the same way, with no click."""
    from playwright.sync_api import sync_playwright

    from test_page import FLAGS

    base, cluster, llm = gateway
    status = "document.getElementById('status').textContent"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + ("/?transport=ws" if transport == "WebSocket" else "/"))
        page.select_option("#mode", "chat")
        page.click("#start")
        try:
            connected = f"{status}.startsWith('Connected over {transport}')"
            page.wait_for_function(connected, timeout=30_000)
        except Exception:
            raise AssertionError(page.inner_text("#status")) from None
        first = int(page.evaluate("sessionId"))
        host = next(w for w in cluster.workers.values() if first in w.sessions)
        asked = len(llm.requests)
        page.fill("#text", "Remember the word pineapple.")
        page.press("#text", "Enter")
        deadline = time.monotonic() + 20
        while len(host.states.get(first, {}).get("memory", [])) < 2:  # the gateway's copy
            assert time.monotonic() < deadline, "the gateway holds no copy of the conversation"
            page.wait_for_timeout(200)
        assert len(llm.requests) == asked + 1

        ray.kill(host.actor)
        page.wait_for_function(f"{status}.startsWith('Reconnected')", timeout=30_000)
        assert "goes on with the same conversation" in page.inner_text("#status")
        second = int(page.evaluate("sessionId"))
        assert second != first and page.is_enabled("#stop")
        assert page.evaluate("transport") == transport.lower()  # (the same way again)
        plays = (  # the new session's video plays
            "(() => { const v = document.getElementById('video');"
            " return !v.hidden && v.readyState >= 2 && v.videoWidth > 0; })()"
            if transport == "WebRTC"
            else "!document.getElementById('canvas').hidden && wsFrames > 5"
        )
        page.wait_for_function(plays, timeout=20_000)
        page.fill("#text", "Which word?")
        page.press("#text", "Enter")
        deadline = time.monotonic() + 20
        while len(llm.requests) < asked + 2:
            assert time.monotonic() < deadline, "the resumed session's question never came"
            page.wait_for_timeout(200)
        said = [m["content"] for m in llm.requests[-1]["messages"]]
        assert "Remember the word pineapple." in said and said[-1] == "Which word?"
        page.click("#stop")
        assert errors == []
        browser.close()
