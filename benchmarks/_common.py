"""What the benchmarks share: the machine line every result starts with, and speech."""

from __future__ import annotations

import os
import platform

import numpy as np

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
