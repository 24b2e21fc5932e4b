"""`rtlipsync eval sync`: the measure itself, and a render measured end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtlipsync.cli import main
from rtlipsync.eval.sync import envelope, measure
from rtlipsync.media.frames import FPS, SAMPLE_RATE


def bursts(seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    """Noise bursts of random length and loudness separated by silences: a speech-like envelope."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    t = 0.3
    while t < seconds - 0.5:
        length = rng.uniform(0.1, 0.4)
        a, b = int(t * SAMPLE_RATE), int((t + length) * SAMPLE_RATE)
        out[a:b] = rng.normal(0, rng.uniform(0.05, 0.3), b - a) * np.hanning(b - a)
        t += length + rng.uniform(0.05, 0.3)
    out[int(3 * SAMPLE_RATE) : int(4.2 * SAMPLE_RATE)] = 0  # a lasting silence
    return out


def opening_from(samples: np.ndarray, shift_s: float) -> np.ndarray:
    env = envelope(samples)
    t = (np.arange(int(len(samples) / SAMPLE_RATE * FPS)) + 0.5) / FPS - shift_s
    return np.interp(t, np.arange(len(env)) / 100 + 0.01, env)


def test_measure_finds_sync_and_lag() -> None:
    x = bursts()
    synced = measure(opening_from(x, 0.0), x)
    assert synced.correlation > 0.95 and synced.lag_ms == 0
    late = measure(opening_from(x, 0.12), x)  # the mouth shows audio from 120 ms earlier
    assert 100 <= late.lag_ms <= 140
    early = measure(opening_from(x, -0.08), x)
    assert -100 <= early.lag_ms <= -60


def test_measure_fails_unrelated_mouths_and_open_silence() -> None:
    x = bursts(seed=1)
    other = measure(opening_from(bursts(seed=2), 0.0), x)
    assert other.correlation < 0.4
    track = opening_from(x, 0.0)
    gaping = track + 0.5 * track.max()  # never closes
    jittery = track + np.random.default_rng(3).uniform(0, 0.5 * track.std() * 3, len(track))
    assert measure(gaping, x).silence_open > 0.5
    assert measure(jittery, x).silence_motion > 0.25


def test_eval_sync_on_a_render(tmp_path: Path, capsys, default_avatar) -> None:
    out = tmp_path / "talk.mp4"
    text = "The quick brown fox jumps over the lazy dog. Then it rests, and runs away again."
    assert main(["-q", "render", "--text", text, "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["-q", "eval", "sync", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # A floor against dead lips; the mouth may lead the sound a little, never trail it much.
    assert report["correlation"] >= 0.4 and -100 <= report["lag_ms"] <= 40
    assert all(report["meets"].values()), report
    assert report["frames_with_face"] == report["frames"]
