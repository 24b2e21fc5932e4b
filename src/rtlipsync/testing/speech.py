"""Speech for tests and benchmarks: the offline voice as PCM, and WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def espeak_pcm(text: str, rate: int = 16_000, wpm: int = 140) -> np.ndarray:
    """``text`` spoken by the offline voice: mono int16 at ``rate``."""
    from rtlipsync.speech.espeak import EspeakTTS

    return EspeakTTS(rate_wpm=wpm).synthesize(text).at_rate(rate).pcm


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
