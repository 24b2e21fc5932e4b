"""Shared fixtures: a private data root, the built-in avatar, generated speech and media."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def media(name: str) -> Path:
    """A file of the shared test media, or skip the test when it is not there."""
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"shared test media not present: {path}")
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    pcm = (
        samples if samples.dtype == np.int16 else (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test runs against a private data root, never the user's."""
    root = tmp_path_factory.mktemp("rtlipsync-home")
    old = os.environ.get("RTLIPSYNC_HOME")
    os.environ["RTLIPSYNC_HOME"] = str(root)
    yield root
    if old is None:
        os.environ.pop("RTLIPSYNC_HOME", None)
    else:
        os.environ["RTLIPSYNC_HOME"] = old


@pytest.fixture(scope="session")
def default_avatar(data_root: Path):
    from rtlipsync.face.avatar import ensure_default_avatar, load_avatar

    ensure_default_avatar()
    return load_avatar("default")


def espeak_pcm(text: str, rate: int = 16_000, wpm: int = 140) -> np.ndarray:
    """``text`` spoken by the offline voice: mono int16 at ``rate``."""
    from rtlipsync.speech.espeak import EspeakTTS

    return EspeakTTS(rate_wpm=wpm).synthesize(text).at_rate(rate).pcm


@pytest.fixture(scope="session")
def speech():
    """English speech from the offline voice, with phoneme timings (22.05 kHz)."""
    from rtlipsync.speech.espeak import EspeakTTS

    return EspeakTTS().synthesize("Bob and mama ate a pie. We were so happy to see you.")


@pytest.fixture(scope="session")
def speech16k(speech):
    from rtlipsync.media.frames import SAMPLE_RATE

    return speech.at_rate(SAMPLE_RATE)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves threads running (encoders, loaders, ...)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        # (tqdm's one monitor thread is process-wide and idles between progress bars)
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name != "tqdm_monitor"
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left threads running: {leaked}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(config=None) -> Iterator[str]:
    """Run our server under uvicorn on a loopback port in a thread; yield its base URL."""
    from rtlipsync.server import create_app

    with serving_app(create_app(config)) as base:
        yield base


@contextlib.contextmanager
def serving_app(app) -> Iterator[str]:  # noqa: ANN001 - any ASGI app
    """Run an ASGI app under uvicorn on a loopback port in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def wait_for(predicate, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()
