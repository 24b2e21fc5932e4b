"""Reading audio files and converting between rates and sample formats."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soxr

from rtlipsync.errors import InputError


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 audio (soxr, high quality)."""
    if from_rate == to_rate or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return soxr.resample(np.asarray(x, dtype=np.float32), from_rate, to_rate).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) / 32768.0


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode any audio (or the audio track of a video) to mono float32.

    Returns ``(samples, rate)``; with ``sample_rate`` given the audio is resampled to it.
    Raises `InputError` for a missing, unreadable, silent-less (empty) or audio-less file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(
                    f"{path} has no audio track: give a WAV, MP3, M4A, OGG or FLAC file"
                )
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            # Planar float with the source's channels; we average them to mono ourselves
            # (ffmpeg's own downmix weights each channel by 0.707, which can clip).
            resampler = av.AudioResampler(format="fltp", rate=rate)
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().mean(axis=0))
    except InputError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot read audio from {path}: {exc}; is it a valid audio file?"
        ) from exc
    samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise InputError(f"audio file {path} is empty: it holds no samples")
    if sample_rate is not None:
        samples = resample(samples, rate, sample_rate)
        rate = sample_rate
    return samples, int(rate)
