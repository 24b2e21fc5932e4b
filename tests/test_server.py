"""The server over real protocols: HTTP on loopback, and a real aiortc peer receiving media."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from rtlipsync.server import ServerConfig

from conftest import serving, wait_for


class Peer:
    """A receiving WebRTC peer, as a browser would be: recvonly video and audio."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.video: list[tuple[float, int, np.ndarray]] = []  # (arrival, pts, image)
        self.audio: list[tuple[float, int, float]] = []  # (arrival, pts, rms)
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, base: str, **extra: object) -> dict:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:  # noqa: ANN001 - aiortc's track
            self._tasks.append(asyncio.ensure_future(self._pull(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{base}/offer",
                json={"sdp": self.pc.localDescription.sdp, "type": "offer", **extra},
            )
        assert r.status_code == 200, r.text
        answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer

    async def _pull(self, track) -> None:  # noqa: ANN001
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    self.video.append((now, frame.pts, frame.to_ndarray(format="bgr24")))
                else:
                    pcm = frame.to_ndarray().astype(np.float64)
                    self.audio.append((now, frame.pts, float(np.sqrt(np.mean(pcm**2)))))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def test_seed_check_and_page(default_avatar) -> None:
    with serving() as base:
        assert httpx.get(f"{base}/digital_human/check").json() == {"status": "Server is running"}
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "Start" in page.text and "/offer" in page.text
        poster = httpx.get(f"{base}/avatars/default/poster.jpg")
        assert poster.headers["content-type"] == "image/jpeg" and len(poster.content) > 10_000


def test_webrtc_session_speaks_and_stops_on_interrupt(default_avatar) -> None:
    points = default_avatar.landmarks[0]
    x0, y0 = (points[[61, 13]].min(axis=0) - 4).astype(int)
    x1, y1 = (points[[291, 14, 17]].max(axis=0) + 4).astype(int)

    def mouth(img: np.ndarray) -> np.ndarray:
        return img[y0:y1, x0:x1].astype(np.float64)

    async def scenario(base: str) -> None:
        peer = Peer()
        answer = await peer.connect(base)
        sid = answer["sessionid"]
        async with httpx.AsyncClient(base_url=base) as http:
            # Idle: 25 fps of video with silence.
            assert await wait_for(lambda: len(peer.video) > 5, 10), "no video arrived"
            t0, n0 = time.monotonic(), len(peer.video)
            await asyncio.sleep(2.0)
            fps = (len(peer.video) - n0) / (time.monotonic() - t0)
            assert 21 <= fps <= 29, fps
            assert max(rms for _, _, rms in peer.audio[-50:]) < 50  # silence
            idle_mouth = mouth(peer.video[-1][2])
            assert (await http.post("/is_speaking", json={"sessionid": sid})).json() == {
                "code": 0,
                "data": False,
            }
            # Speak: sound arrives and the mouth moves.
            mark = len(peer.audio)
            text = "Hello there. I am going to talk for a good long while, so please listen."
            r = await http.post("/human", json={"sessionid": sid, "text": text, "type": "echo"})
            assert r.json()["code"] == 0
            assert await wait_for(lambda: any(a[2] > 500 for a in peer.audio[mark:]), 5), "no sound"
            assert (await http.post("/is_speaking", json={"sessionid": sid})).json()["data"] is True
            await asyncio.sleep(0.6)
            moved = max(np.abs(mouth(v[2]) - idle_mouth).mean() for v in peer.video[-15:])
            assert moved > 8, moved
            # Interrupt: the session says it stopped ...
            r = await http.post("/interrupt_talk", json={"sessionid": sid})
            stopped_at = time.monotonic()
            assert r.json()["frame"] > 0
            await asyncio.sleep(0.8)
            state = (await http.get(f"/sessions/{sid}")).json()
            assert state["speaking"] is False and state["frame"] > r.json()["frame"]
            # ... and at the receiver, silence once the jitter buffer has drained.
            late = [rms for t, _, rms in peer.audio if t > stopped_at + 0.3]
            assert late and max(late) < 50, max(late)
            # Speech after an interruption starts cleanly.
            mark = len(peer.audio)
            await http.post("/human", json={"sessionid": sid, "text": "And again.", "type": "echo"})
            assert await wait_for(lambda: any(a[2] > 500 for a in peer.audio[mark:]), 5)
            # Close: the session is gone.
            assert (await http.post("/close", json={"sessionid": sid})).json()["code"] == 0
            assert (await http.get(f"/sessions/{sid}")).status_code == 404
        await peer.close()

    with serving() as base:
        asyncio.run(scenario(base))


def test_frames_on_the_wire_stop_within_two_frames_of_an_interrupt(default_avatar) -> None:
    """The session's record of what it handed to the transports, around an interruption."""
    from rtlipsync.session import Session

    async def scenario() -> None:
        session = Session(default_avatar)
        session.start()
        session.say("This sentence is long enough to still be playing when it is cut off.")
        assert await wait_for(lambda: session.speaking, 5)
        await asyncio.sleep(0.5)
        cut = session.interrupt()
        await asyncio.sleep(0.4)
        after = [(i, s) for i, s in session.history if i > cut + 2]
        assert after and not any(s for _, s in after)
        assert any(s for i, s in session.history if i <= cut)
        await session.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/offer", {"sdp": "garbage", "type": "offer"}, 400, "malformed SDP"),
        (
            "/offer",
            {"sdp": "v=0\r\nm=video 9 UDP\r\n", "type": "answer"},
            400,
            "expected an SDP offer",
        ),
        ("/offer", {"sdp": "v=0\r\nm=video 9 junk\r\n", "type": "offer"}, 400, "cannot negotiate"),
        ("/human", {"sessionid": 1, "text": "hi"}, 404, "unknown session"),
        ("/interrupt_talk", {"sessionid": 1}, 404, "unknown session"),
        ("/is_speaking", {"sessionid": 1}, 404, "unknown session"),
        ("/human", {"text": "no session id"}, 422, ""),
        ("/offer", {"sdp": "v=0\r\nm=video 9 UDP\r\n", "mode": "dance"}, 400, "mode must be"),
        (
            "/offer",
            {"sdp": "v=0\r\nm=video 9 UDP\r\n", "mode": "realtime"},
            409,
            "realtime mode needs a realtime service",
        ),
        ("/mode", {"sessionid": 1, "mode": "chat"}, 404, "unknown session"),
        ("/persona", {"sessionid": 1, "text": "You are kind."}, 404, "unknown session"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(default_avatar, path, body, status, message) -> None:
    with serving() as base:
        r = httpx.post(f"{base}{path}", json=body)
        assert r.status_code == status, r.text
        assert message in r.text
        assert httpx.get(f"{base}/digital_human/check").status_code == 200  # still up


def test_session_limit(default_avatar) -> None:
    async def scenario(base: str) -> None:
        first = Peer()
        await first.connect(base)
        second = Peer()
        second.pc.addTransceiver("video", direction="recvonly")
        await second.pc.setLocalDescription(await second.pc.createOffer())
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{base}/offer", json={"sdp": second.pc.localDescription.sdp, "type": "offer"}
            )
            assert r.status_code == 503 and "full" in r.json()["msg"]
        await first.close()
        await second.close()

    with serving(ServerConfig(max_sessions=1)) as base:
        asyncio.run(scenario(base))


def test_a_vanished_peer_is_cleaned_up(default_avatar) -> None:
    async def scenario(base: str) -> None:
        peer = Peer()
        answer = await peer.connect(base)
        assert await wait_for(lambda: len(peer.video) > 3, 10)
        await peer.close()  # the tab is gone
        async with httpx.AsyncClient(base_url=base) as http:

            async def gone() -> bool:
                return (await http.get(f"/sessions/{answer['sessionid']}")).status_code == 404

            deadline = time.monotonic() + 15
            while not await gone():
                assert time.monotonic() < deadline, "session outlived its peer"
                await asyncio.sleep(0.2)

    with serving() as base:
        asyncio.run(scenario(base))


def test_unknown_avatar_for_a_session(default_avatar) -> None:
    async def scenario(base: str) -> None:
        peer = Peer()
        peer.pc.addTransceiver("video", direction="recvonly")
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{base}/offer",
                json={"sdp": peer.pc.localDescription.sdp, "type": "offer", "avatar": "nobody"},
            )
        assert r.status_code == 404 and "no avatar named" in r.json()["msg"]
        await peer.close()

    with serving() as base:
        asyncio.run(scenario(base))


def test_seed_preprocess_and_gen_stay_inside_the_data_root(
    default_avatar, data_root, speech
) -> None:
    from rtlipsync.face.avatar import default_avatar_source

    from conftest import write_wav

    inputs = data_root / "inputs"
    inputs.mkdir(exist_ok=True)
    (inputs / "face.png").write_bytes(default_avatar_source().read_bytes())
    write_wav(inputs / "tts.wav", speech.pcm, speech.sample_rate)
    ids = {"user_id": "u1", "request_id": "r1", "streamer_id": "streamer1"}
    with serving() as base, httpx.Client(base_url=base, timeout=60) as http:
        # (an absolute path inside the data root, as in the seed's example)
        source = str(inputs / "face.png")
        r = http.post("/digital_human/preprocess", json={**ids, "video_path": source})
        assert r.status_code == 200 and r.json()["code"] == 0, r.text
        assert r.json()["data"]["frames"] == 1
        # the seed's own fields, at the top level
        assert (r.json()["user_id"], r.json()["request_id"]) == ("u1", "r1")
        r = http.post(
            "/digital_human/gen", json={**ids, "tts_path": "inputs/tts.wav", "chunk_id": 3}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["user_id"], r.json()["request_id"]) == ("u1", "r1")
        video = Path(r.json()["digital_human_mp4_path"])
        assert video.is_absolute() and video.stat().st_size > 10_000
        out = data_root / r.json()["data"]["video_path"]
        assert out.resolve() == video.resolve()
        assert out == data_root / "outputs" / "u1" / "r1" / "3.mp4" and out.stat().st_size > 10_000
        assert abs(r.json()["data"]["duration"] - speech.duration) < 0.05
        # Paths outside the data root, and ids that would escape it, are refused.
        for path in ("/etc/passwd", "../../etc/passwd", str(data_root / ".." / "x.png")):
            r = http.post("/digital_human/preprocess", json={**ids, "video_path": path})
            assert r.status_code == 403 and "outside the data root" in r.json()["msg"], path
        r = http.post("/digital_human/gen", json={**ids, "tts_path": "/etc/hostname"})
        assert r.status_code == 403
        assert str(data_root) not in r.json()["msg"]  # no server path in what a client sees
        # A NUL byte or a name longer than file systems allow answered 500.
        for bad in ("inputs/\0face.png", "inputs/" + "a" * 300 + ".png", "a/" * 600):
            for route, field in (("preprocess", "video_path"), ("gen", "tts_path")):
                r = http.post(f"/digital_human/{route}", json={**ids, field: bad})
                assert r.status_code == 400, (route, bad[:20], r.text)
                assert "NUL" in r.json()["msg"] or "too long" in r.json()["msg"]
        r = http.post(
            "/digital_human/gen", json={**ids, "user_id": "../..", "tts_path": "inputs/tts.wav"}
        )
        assert r.status_code == 400 and "invalid user_id" in r.json()["msg"]
        r = http.post("/digital_human/gen", json={**ids, "tts_path": "inputs/missing.wav"})
        assert r.status_code == 404 and "no file" in r.json()["msg"]
        assert not (data_root.parent / "x.png").exists()


def test_a_peer_whose_network_vanishes_is_cleaned_up(default_avatar) -> None:
    """No goodbye at all: the peer's ICE just stops (a pulled cable, a closed laptop)."""

    async def scenario(base: str) -> None:
        peer = Peer()
        answer = await peer.connect(base)
        assert await wait_for(lambda: len(peer.video) > 25, 10)
        for transceiver in peer.pc.getTransceivers():  # silence, without DTLS close_notify
            await transceiver.receiver.transport.transport.stop()
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=base) as http:
            while (await http.get(f"/sessions/{answer['sessionid']}")).status_code != 404:
                assert time.monotonic() - t0 < 12, "session outlived its vanished peer"
                await asyncio.sleep(0.25)
        await peer.close()

    with serving(ServerConfig(peer_timeout=4.0)) as base:
        asyncio.run(scenario(base))


def test_request_bodies_are_limited_before_they_are_read(default_avatar) -> None:
    """A 200 MB upload was written in full before its 413; a 10 MB SDP froze every session
    while it was parsed. Now the length a request declares is judged first."""
    import socket
    from urllib.parse import urlsplit

    from rtlipsync.server import ServerConfig

    with serving(ServerConfig(max_upload_mb=5)) as base, httpx.Client(base_url=base) as http:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        with socket.create_connection((host, port), timeout=10) as raw:
            raw.sendall(
                b"POST /humanaudio HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )  # and not one byte more: the answer comes at once
            answer = b""
            while b"larger than" not in answer and (part := raw.recv(4096)):
                answer += part  # (its head and its body may come in separate segments)
            head = answer.decode()
        assert head.startswith("HTTP/1.1 413") and "larger than 5184 KB" in head, head
        offer = {"sdp": "v=0\r\nm=audio " + "x" * 2_000_000, "type": "offer"}
        r = http.post("/offer", json=offer)
        assert r.status_code == 413 and "larger than 1024 KB" in r.json()["msg"]

        def chunks():  # noqa: ANN202 - a body of unknown length
            yield b'{"sessionid": 1, "text": "hi"}'

        r = http.post("/human", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 411
        assert http.get("/digital_human/check").status_code == 200  # the server is fine


def test_health_ready_and_a_log_without_the_page_polls(default_avatar, capsys) -> None:  # noqa: ANN001
    import logging

    from rtlipsync.logs import configure_logging
    from rtlipsync.server import ServerConfig, create_app

    from conftest import serving_app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging()
    try:
        app = create_app(ServerConfig(warm_workers=True))
        with serving_app(app, log_level="info") as base, httpx.Client(base_url=base) as http:
            assert http.get("/health").json() == {"status": "ok"}
            deadline = time.monotonic() + 60
            while (r := http.get("/ready")).status_code != 200:
                assert r.status_code == 503 and r.json()["missing"], r.text
                assert time.monotonic() < deadline, r.json()
                time.sleep(0.2)
            assert r.json() == {"status": "ready", "missing": []}
            for _ in range(5):
                assert http.get("/sessions/123456").status_code == 404  # a failed poll
                http.get("/tasks/nothing")
            http.post("/human", json={"sessionid": 1, "text": "hi"})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert '"POST /human HTTP/1.1" 404' in logged  # requests are logged ...
    assert '"GET /ready HTTP/1.1" 200' not in logged  # ... but not answered polls
    assert logged.count('"GET /sessions/123456 HTTP/1.1" 404') == 5  # failures still are


def test_sigterm_ends_a_busy_server_cleanly_within_five_seconds(data_root, tmp_path) -> None:  # noqa: ANN001
    """`rtlipsync serve` with its workers up and a session mid-sentence: SIGTERM ends the
    session with a close frame and the process, workers included, within 5 s."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import websockets

    from conftest import free_port

    port = free_port()
    env = {**os.environ, "RTLIPSYNC_HOME": str(data_root)}
    command = [sys.executable, "-m", "rtlipsync.cli", "serve", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def scenario() -> tuple[float, int | None, list[int]]:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(base_url=base) as http:
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the server did not become ready"
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.5)
        proc = f"/proc/{server.pid}/task/{server.pid}/children"
        children = (await asyncio.to_thread(Path(proc).read_text)).split()
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session"
            say = {"type": "say", "text": "I am in the middle of a long sentence."}
            await ws.send(json.dumps(say))
            await asyncio.sleep(1.0)
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = None
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            await asyncio.to_thread(server.wait, 10)
            return time.monotonic() - started, code, [int(c) for c in children]

    try:
        took, code, children = asyncio.run(scenario())
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    output = (tmp_path / "serve.log").read_text()
    # (uvicorn finishes its shutdown, then ends by the signal it was sent, as supervisors
    # expect of a process told to stop)
    clean = server.returncode in (0, -signal.SIGTERM)
    assert took < 5.0 and clean, (took, server.returncode, output[-2000:])
    assert "Application shutdown complete" in output
    assert code == 1012  # "service restart": told, not dropped
    assert len(children) >= 2  # the recognition and task workers were up ...

    def running(pid: int) -> bool:  # (a zombie here has ended: no init reaps it)
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    # ... and end too: the workers are joined before the server exits, and multiprocessing's
    # resource tracker follows once its last client has gone.
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if running(pid)], children
    assert "Traceback" not in output


def test_links_planted_in_the_data_root_lead_nowhere(default_avatar, data_root, tmp_path) -> None:  # noqa: ANN001
    """A symlink inside the data root let an avatar name read any folder and the seed's
    gen write anywhere."""
    import shutil

    outside = tmp_path / "outside"
    shutil.copytree(data_root / "avatars" / "default", outside / "avatar")
    (outside / "written").mkdir()
    (data_root / "avatars" / "planted").symlink_to(outside / "avatar")
    (data_root / "outputs").mkdir(exist_ok=True)
    (data_root / "outputs" / "intruder").symlink_to(outside / "written")
    try:
        with serving() as base, httpx.Client(base_url=base, timeout=60) as http:
            r = http.get("/avatars/planted/poster.jpg")
            assert r.status_code == 403 and "link out of the data root" in r.json()["msg"]
            assert "planted" not in [a["name"] for a in http.get("/avatars").json()["data"]]
            ids = {"user_id": "intruder", "request_id": "r1", "streamer_id": "default"}
            r = http.post("/digital_human/gen", json={**ids, "tts_path": "x.wav", "chunk_id": 1})
            assert r.status_code == 403
            r = http.post(
                "/digital_human/preprocess", json={**ids, "video_path": "avatars/planted"}
            )
            assert r.status_code == 409  # and the built-in avatar is not re-prepared either
    finally:
        (data_root / "avatars" / "planted").unlink()
        (data_root / "outputs" / "intruder").unlink()
    assert list((outside / "written").iterdir()) == []


def test_the_openapi_document_states_the_errors_and_media_types(default_avatar) -> None:
    with serving() as base, httpx.Client(base_url=base) as http:
        doc = http.get("/openapi.json").json()
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert len(operations) >= 20

    def statuses(path: str, method: str = "post") -> set[str]:
        return set(doc["paths"][path][method]["responses"]) - {"200", "422"}

    # Each route its own: it listed only 200 and 422, then every status on every route.
    assert statuses("/avatars", "get") == {"401"}
    assert statuses("/health", "get") == set()
    assert statuses("/ready", "get") == {"503"}
    assert statuses("/sessions/{session_id}", "get") == {"401", "403", "404"}
    assert statuses("/human") == {"400", "401", "403", "404", "411", "413"}
    assert statuses("/offer") == {"400", "401", "403", "404", "409", "411", "413", "429", "503"}
    assert statuses("/record") == {"400", "401", "403", "404", "409", "411", "413"}
    assert "415" in statuses("/avatars") and "415" not in statuses("/human")
    # what our own checks hold a field to, the document states
    gen = doc["components"]["schemas"]["GenRequest"]["properties"]
    assert gen["user_id"]["pattern"] and gen["tts_path"]["maxLength"] == 1024
    error = doc["components"]["schemas"]["ErrorReply"]
    assert set(error["properties"]) == {"code", "msg"}
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    poster = doc["paths"]["/avatars/{name}/poster.jpg"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics and "application/json" not in metrics
    assert "image/jpeg" in poster and "application/json" not in poster


def test_the_framework_s_own_refusals_speak_our_shape_and_allow_names_every_method(
    default_avatar,
) -> None:
    with serving() as base, httpx.Client(base_url=base) as http:
        r = http.request("OPTIONS", "/avatars")
        assert r.status_code == 405
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}  # was GET
        assert isinstance(r.json()["msg"], str)
        broken = http.post(
            "/close", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 422 and broken.json()["code"] == -1  # was {"detail"}
        assert "json" in broken.json()["msg"].lower()
        missing = http.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["code"] == -1
