"""What the benchmarks share: the machine line every result starts with, speech, and timing
an engine stream."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from rtlipsync.engines.base import EngineStream, render_speech
from rtlipsync.media.audio import load_audio, to_int16
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.speech.espeak import EspeakTTS


def speech_pcm(seconds: float, audio: str | None = None) -> np.ndarray:
    """``seconds`` of 16 kHz int16 speech: from ``audio`` if given, else espeak-ng, repeated."""
    if audio:
        x, _ = load_audio(audio, SAMPLE_RATE)
        return to_int16(x[: int(seconds * SAMPLE_RATE)])
    text = "The quick brown fox jumps over the lazy dog, and then it runs away again. " * 8
    pcm = EspeakTTS().synthesize(text).at_rate(SAMPLE_RATE).pcm
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(pcm)))
    return np.tile(pcm, reps)[: int(seconds * SAMPLE_RATE)]


def machine() -> str:
    """The line that says where a figure was measured."""
    return f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def time_stream(stream: EngineStream, pcm: np.ndarray) -> tuple[int, float, float]:
    """Render ``pcm`` through ``stream``: (frames, CPU seconds across threads, wall seconds)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    frames = sum(1 for _ in render_speech(stream, pcm))
    return frames, time.process_time() - cpu0, time.perf_counter() - wall0


def print_stream(frames: int, cpu: float, wall: float, what: str, goal: str) -> None:
    """The figures every stream benchmark prints, from `time_stream`'s result."""
    print(f"frames: {frames} {what}")
    print(f"CPU time per frame: {1000 * cpu / frames:.2f} ms")
    print(f"frames per CPU-second: {frames / cpu:.0f}  ({goal})")
    print(f"wall-clock fps: {frames / wall:.0f}")
