"""Shared fixtures: a private data root, the built-in avatar, generated speech and media."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

# Shared with the benchmarks: defined once in the package, named here for the tests.
from rtlipsync.testing.serving import free_port, serving, serving_app, wait_for  # noqa: F401
from rtlipsync.testing.speech import espeak_pcm, write_wav  # noqa: F401

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def media(name: str) -> Path:
    """A file of the shared test media, or skip the test when it is not there."""
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"shared test media not present: {path}")
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
