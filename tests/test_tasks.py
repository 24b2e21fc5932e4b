"""Background work over HTTP: avatars uploaded and prepared, offline render jobs, webhooks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx

from rtlipsync.face.avatar import default_avatar_source
from rtlipsync.server import ServerConfig

from conftest import free_port, media, serving, write_wav


def poll(http: httpx.Client, url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = http.get(url).json()
        if state["state"] in ("done", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


class Hooks(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_upload_avatar_then_use_it(default_avatar) -> None:
    from rtlipsync.server.app import uploads_dir

    before = set(uploads_dir().iterdir())
    with serving() as base, httpx.Client(base_url=base, timeout=30) as http:
        face = default_avatar_source().read_bytes()
        r = http.post(
            "/avatars", data={"name": "uploaded"}, files={"file": ("me.png", face, "image/png")}
        )
        assert r.status_code == 200, r.text
        state = poll(http, f"/tasks/{r.json()['task']}")
        assert state["state"] == "done" and state["progress"] == 1.0 and state["name"] == "uploaded"
        names = [a["name"] for a in http.get("/avatars").json()["data"]]
        assert "uploaded" in names
        # Nobody replaces an avatar by uploading over it, and nobody the built-in one.
        again = {"file": ("me.png", face, "image/png")}
        r = http.post("/avatars", data={"name": "uploaded"}, files=again)
        assert r.status_code == 409 and "replace=true" in r.json()["msg"]
        r = http.post("/avatars", data={"name": "default"}, files=again)
        assert r.status_code == 409 and "built-in" in r.json()["msg"]
        r = http.post("/avatars", data={"name": "uploaded", "replace": "true"}, files=again)
        assert poll(http, f"/tasks/{r.json()['task']}")["state"] == "done"
        assert http.get("/avatars/uploaded/poster.jpg").status_code == 200
        # Refused before any work: bad name, wrong type, empty, no face (fails in the task).
        bad = [
            ({"name": "../x"}, ("a.png", face), 400),
            ({"name": "doc"}, ("a.pdf", b"%PDF-1.4"), 415),
            ({"name": "empty"}, ("a.png", b""), 400),
        ]
        for data, (fname, content), status in bad:
            assert (
                http.post("/avatars", data=data, files={"file": (fname, content)}).status_code
                == status
            )
        wall = http.post("/avatars", data={"name": "wall"}, files={"file": ("w.png", _flat_png())})
        state = poll(http, f"/tasks/{wall.json()['task']}")
        assert state["state"] == "failed" and "no face found" in state["error"]
        assert http.get("/tasks/nothing").status_code == 404
    assert set(uploads_dir().iterdir()) <= before  # prepared or failed, no upload is kept


def _flat_png() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()


def test_render_job_with_webhook(default_avatar, speech, tmp_path) -> None:
    wav = write_wav(tmp_path / "s.wav", speech.pcm, speech.sample_rate).read_bytes()
    port = free_port()
    hooks = HTTPServer(("127.0.0.1", port), Hooks)
    thread = threading.Thread(target=hooks.serve_forever, name="webhook")
    thread.start()
    try:
        config = ServerConfig(webhook_hosts=["127.0.0.1"])  # this test's own hook server
        with serving(config) as base, httpx.Client(base_url=base, timeout=30) as http:
            r = http.post(
                "/jobs",
                data={"avatar": "default", "webhook": f"http://127.0.0.1:{port}/done"},
                files={"audio": ("s.wav", wav)},
            )
            job = r.json()["job"]
            state = poll(http, f"/jobs/{job}")
            assert state["state"] == "done", state
            video = http.get(state["url"])
            assert video.status_code == 200 and len(video.content) > 10_000
            (tmp_path / "out.mp4").write_bytes(video.content)
            deadline = time.monotonic() + 5
            while not Hooks.received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert Hooks.received and Hooks.received[-1]["id"] == job
            assert Hooks.received[-1]["state"] == "done"
            # Bad jobs: unknown avatar, bad audio type, bad webhook, corrupt audio.
            assert (
                http.post(
                    "/jobs", data={"avatar": "nobody"}, files={"audio": ("s.wav", wav)}
                ).status_code
                == 404
            )
            assert (
                http.post(
                    "/jobs", data={"avatar": "default"}, files={"audio": ("s.txt", b"x")}
                ).status_code
                == 415
            )
            bad_hook = {"avatar": "default", "webhook": "ftp://x"}
            assert (
                http.post("/jobs", data=bad_hook, files={"audio": ("s.wav", wav)}).status_code
                == 400
            )
            # Not into the server's own network unless named (it posted to any address).
            for inside in ("http://localhost:9/x", "http://10.1.2.3/x", "http://[::1]:80/"):
                hook = {"avatar": "default", "webhook": inside}
                r = http.post("/jobs", data=hook, files={"audio": ("s.wav", wav)})
                assert r.status_code == 400 and "webhook_hosts" in r.json()["msg"], inside
            r = http.post(
                "/jobs", data={"avatar": "default"}, files={"audio": ("s.wav", b"RIFFjunk" * 50)}
            )
            state = poll(http, f"/jobs/{r.json()['job']}")
            assert state["state"] == "failed" and "cannot read audio" in state["error"]
            assert http.get(f"/jobs/{r.json()['job']}/result").status_code == 409
    finally:
        hooks.shutdown()
        hooks.server_close()
        thread.join()
    from rtlipsync.eval.sync import measure_sync

    assert measure_sync(tmp_path / "out.mp4").correlation > 0.5


def test_upload_a_video_avatar(default_avatar) -> None:
    clip = media("yongen.mp4")
    with serving() as base, httpx.Client(base_url=base, timeout=30) as http:
        r = http.post(
            "/avatars", data={"name": "yongen-up"}, files={"file": ("y.mp4", clip.read_bytes())}
        )
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = http.get(f"/tasks/{r.json()['task']}").json()
            seen.add(round(state["progress"], 1))
            if state["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert state["state"] == "done" and state["frames"] > 200
        assert len(seen) >= 3  # progress was reported along the way


def test_a_killed_worker_fails_its_job_and_the_server_lives_on(  # noqa: ANN001
    default_avatar, speech, tmp_path
) -> None:
    """The render job's worker process is killed mid-job: that job fails with a sentence
    saying so, the next job runs in a new worker, and a live session never stops."""
    import os
    import signal

    import numpy as np
    from websockets.sync.client import connect

    from rtlipsync.server import create_app
    from rtlipsync.server.app import jobs_dir, uploads_dir

    from conftest import serving_app

    long = np.tile(speech.pcm, int(np.ceil(20 * speech.sample_rate / len(speech.pcm))))
    wav = write_wav(tmp_path / "long.wav", long, speech.sample_rate).read_bytes()
    short = write_wav(tmp_path / "s.wav", speech.pcm, speech.sample_rate).read_bytes()
    app = create_app()
    before = set(uploads_dir().iterdir())
    with serving_app(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        with connect(base.replace("http://", "ws://") + "/ws", max_size=None) as ws:
            assert json.loads(ws.recv())["type"] == "session"
            started = time.monotonic()
            frames = 0

            def receive_for(seconds: float) -> None:
                nonlocal frames
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    frames += isinstance(ws.recv(timeout=5), bytes)

            job = http.post("/jobs", data={"avatar": "default"}, files={"audio": ("l.wav", wav)})
            job_id = job.json()["job"]
            deadline = time.monotonic() + 60
            while http.get(f"/jobs/{job_id}").json()["state"] != "running":
                assert time.monotonic() < deadline, "the job never started"
                receive_for(0.1)
            (pid,) = app.state.tasks.workers
            os.kill(pid, signal.SIGKILL)
            while (state := http.get(f"/jobs/{job_id}").json())["state"] == "running":
                receive_for(0.1)
            assert state["state"] == "failed"
            assert "stopped (exit code -9)" in state["error"] and "try again" in state["error"]
            assert not list(jobs_dir().glob(".*.mp4"))  # its unfinished video is gone too
            again = http.post(
                "/jobs", data={"avatar": "default"}, files={"audio": ("s.wav", short)}
            )
            while (state := http.get(f"/jobs/{again.json()['job']}").json())["state"] not in (
                "done",
                "failed",
            ):
                receive_for(0.1)
            assert state["state"] == "done", state
            assert app.state.tasks.workers and app.state.tasks.workers[0] != pid
            assert set(uploads_dir().iterdir()) <= before  # the killed job's upload went too
            receive_for(0.5)
            elapsed = time.monotonic() - started
            assert frames >= 0.8 * 25 * elapsed  # the session's frames kept coming


def test_queued_tasks_are_bounded_and_a_refused_upload_is_not_kept(
    default_avatar, speech, tmp_path, data_root
) -> None:  # noqa: ANN001
    """One client could queue uploads to prepare (each kept on disk) without end."""
    wav = write_wav(tmp_path / "s.wav", speech.pcm, speech.sample_rate).read_bytes()
    uploads = data_root / "uploads"
    with (
        serving(ServerConfig(max_queued_tasks=1)) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        first = http.post("/jobs", data={"avatar": "default"}, files={"audio": ("s.wav", wav)})
        assert first.status_code == 200
        kept = sorted(uploads.iterdir()) if uploads.exists() else []
        second = http.post("/jobs", data={"avatar": "default"}, files={"audio": ("s.wav", wav)})
        assert second.status_code == 503 and "try again" in second.json()["msg"]
        face = default_avatar_source().read_bytes()
        r = http.post("/avatars", data={"name": "later"}, files={"file": ("f.png", face)})
        assert r.status_code == 503
        after = sorted(uploads.iterdir()) if uploads.exists() else []
        assert set(after) <= set(kept)  # nothing new kept (the first's may be gone, done)
        assert poll(http, f"/jobs/{first.json()['job']}")["state"] == "done"
        third = http.post("/jobs", data={"avatar": "default"}, files={"audio": ("s.wav", wav)})
        assert third.status_code == 200  # room again once the first is done
        assert poll(http, f"/jobs/{third.json()['job']}")["state"] == "done"
