"""Speech for the benchmarks: a file's, or generated offline when none is given."""

from __future__ import annotations

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
