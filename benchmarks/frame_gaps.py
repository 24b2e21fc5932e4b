"""Does a live session's video keep time while the server does heavy work?

The server runs as users run it (`rtlipsync serve`, its own process, default settings: the
offline recogniser and voice). A real aiortc peer in this process holds a session and stamps
the arrival of every video frame and audio packet while, in turn:

  (a) it takes spoken turns (espeak speech through its microphone, recognised by
      pocketsphinx, which the avatar answers);
  (b) an avatar is uploaded and prepared from a 20 s video;
  (c) an offline render job of 60 s of speech runs;
  (d) three other sessions (WebSocket clients) make the avatar speak at once.

Printed per phase: video frames received, the largest and the 99th-percentile gap between
video frames, and audio underruns at the receiver (gaps between audio packets over 60 ms).

    python benchmarks/frame_gaps.py [--phases abcd] [--video PATH]

Goal for each phase: max gap <= 80 ms, p99 <= 45 ms, no audio underrun.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

from rtlipsync.testing.peers import Receiver, drain_socket
from rtlipsync.testing.serving import serve_process
from rtlipsync.testing.speech import espeak_pcm, write_wav

from _common import machine

ROOT = Path(__file__).resolve().parents[1]


async def spoken_turns(rx: Receiver, turns: int) -> None:
    for text in ["hello there", "what time is it", "tell me a story", "good morning"][:turns]:
        duration = rx.mic.say(espeak_pcm(text))
        await asyncio.sleep(duration + 4.0)  # recognised, answered, spoken


async def wait_task(http: httpx.AsyncClient, url: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (await http.get(url)).json()
        if state["state"] in ("done", "failed"):
            return state
        await asyncio.sleep(0.25)
    raise TimeoutError(url)


async def post_form(url: str, **fields: str) -> dict:
    """POST a multipart form from another process (``curl``), as a user's browser would:
    this process's event loop is the receiver's, and sending megabytes from it would delay
    the receiver. A value starting with "@" is a file."""
    args = [part for key, value in fields.items() for part in ("-F", f"{key}={value}")]
    upload = await asyncio.create_subprocess_exec(
        "curl", "-s", *args, url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await upload.communicate()
    return json.loads(out)


async def run(base: str, phases: str, video: Path, work: Path) -> None:
    rx = Receiver()
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        await rx.connect(http)
        await asyncio.sleep(3.0)  # connected and settled
        t = time.monotonic()
        await asyncio.sleep(5.0)
        rx.report("idle (reference)", t, time.monotonic())
        for phase in phases:
            await run_phase(phase, rx, http, base, video, work)
    await rx.close()


async def run_phase(
    phase: str, rx: Receiver, http: httpx.AsyncClient, base: str, video: Path, work: Path
) -> None:
    if phase == "a":
        t = time.monotonic()
        await spoken_turns(rx, 4)
        rx.report("(a) spoken turns, offline recogniser", t, time.monotonic())
    if phase == "b":
        t = time.monotonic()
        name = f"gaps-upload-{time.monotonic_ns()}"
        task = await post_form(f"{base}/avatars", name=name, file=f"@{video}")
        state = await wait_task(http, f"/tasks/{task['task']}")
        rx.report(f"(b) avatar prepared ({state['state']})", t, time.monotonic())
    if phase == "c":
        speech = np.tile(espeak_pcm("The quick brown fox jumps over the lazy dog. " * 3), 6)
        wav = write_wav(work / "sixty.wav", speech[: 60 * 16000], 16000)
        t = time.monotonic()
        job = await post_form(f"{base}/jobs", avatar="default", audio=f"@{wav}")
        state = await wait_task(http, f"/jobs/{job['job']}")
        rx.report(f"(c) 60 s render job ({state['state']})", t, time.monotonic())
    if phase == "d":
        t = time.monotonic()
        url = base.replace("http://", "ws://") + "/ws"
        others = [await websockets.connect(url, max_size=None) for _ in range(3)]

        drains = [asyncio.ensure_future(drain_socket(ws)) for ws in others]
        line = "Three other people are talking to the avatar at the same time as you."
        for ws in others:
            await ws.send(json.dumps({"type": "say", "text": line}))
        rx.mic.say(espeak_pcm("hello there"))
        await asyncio.sleep(8.0)
        rx.report("(d) three other sessions speaking", t, time.monotonic())
        for ws in others:
            await ws.close()
        for task in drains:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="abcd")
    parser.add_argument(
        "--video",
        type=Path,
        default=ROOT.parent / "shared" / "media" / "talking" / "latentsync-demo3.mp4",
        help="a ~20 s video to upload in phase (b)",
    )
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with serve_process(work / "home") as (base, server):
            print(f"server: rtlipsync serve (pid {server.pid}), default settings")
            asyncio.run(run(base, args.phases, args.video, work))


if __name__ == "__main__":
    main()
