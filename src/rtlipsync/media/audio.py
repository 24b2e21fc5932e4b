"""Reading audio files and converting between rates and sample formats."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soxr

from rtlipsync.errors import InputError


class GrowingBuffer:
    """Samples (or rows of features) that grow by appends and are read from the front, in
    time proportional to their length: ``np.concatenate`` on every push copies everything
    held so far, which made a long upload quadratic (a 10-minute WAV froze every session for
    seconds, a WAV whose header claimed 1 Hz for over ten minutes). Storage doubles when
    full."""

    def __init__(self, dtype: type = np.int16, row_shape: tuple[int, ...] = ()) -> None:
        self._data = np.zeros((4096 if not row_shape else 16, *row_shape), dtype)
        self._start = 0  # first unread sample
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def data(self) -> np.ndarray:
        """What is held, unread, as one array (a view: valid until the next append)."""
        return self._data[self._start : self._end]

    def append(self, pcm: np.ndarray) -> None:
        n = len(pcm)
        if self._end + n > len(self._data):
            held = len(self)
            if held + n > len(self._data) // 2:
                size = max(2 * len(self._data), 2 * (held + n))
                grown = np.zeros((size, *self._data.shape[1:]), self._data.dtype)
            else:
                grown = self._data  # enough room once what was read is dropped
            grown[:held] = self._data[self._start : self._end]
            self._data, self._start, self._end = grown, 0, held
        self._data[self._end : self._end + n] = pcm
        self._end += n

    def take(self, n: int) -> np.ndarray:
        """The first ``n`` unread samples, or all if fewer are held (a copy), now read."""
        out = self._data[self._start : min(self._start + n, self._end)].copy()
        self._start += len(out)
        return out

    def clear(self) -> None:
        self._start = self._end = 0


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 audio (soxr, high quality)."""
    if from_rate == to_rate or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return soxr.resample(np.asarray(x, dtype=np.float32), from_rate, to_rate).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) / 32768.0


MIN_RATE = 4000  # Hz: below this a header's sample rate is not audio (a forged 1 Hz WAV)


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    label: str | None = None,
) -> tuple[np.ndarray, int]:
    """Decode any audio (or the audio track of a video) to mono float32.

    Returns ``(samples, rate)``; with ``sample_rate`` given the audio is resampled to it.
    Raises `InputError` for a missing, unreadable, silent-less (empty) or audio-less file, a
    sample rate no audio has, and with ``max_seconds`` for audio longer than that: the
    length is checked as it decodes, so a small file that decodes to hours (a header that
    lies, minutes of compressed silence) is refused after ``max_seconds`` of work, not all.
    Messages name the file ``label`` (an upload's own name), by default its path.
    """
    path = Path(path)
    name = label or str(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {name}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(
                    f"{name} has no audio track: give a WAV, MP3, M4A, OGG or FLAC file"
                )
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if not rate or rate < MIN_RATE:
                raise InputError(
                    f"{name} says its sample rate is {rate} Hz, which no audio has "
                    f"(at least {MIN_RATE} Hz): the file is damaged or not audio"
                )
            declared = container.duration / 1e6 if container.duration else 0.0
            if max_seconds is not None and declared > max_seconds:
                raise _too_long(name, max_seconds)
            limit = None if max_seconds is None else int(max_seconds * rate) + 1
            decoded = 0
            # Planar float with the source's channels; we average them to mono ourselves
            # (ffmpeg's own downmix weights each channel by 0.707, which can clip).
            resampler = av.AudioResampler(format="fltp", rate=rate)
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
                decoded += frame.samples
                if limit is not None and decoded > limit:
                    raise _too_long(name, max_seconds or 0.0)
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().mean(axis=0))
    except InputError:
        raise
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot read audio from {name}: {exc}; is it a valid audio file?"
        ) from exc
    samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise InputError(f"audio file {name} is empty: it holds no samples")
    if sample_rate is not None:
        samples = resample(samples, rate, sample_rate)
        rate = sample_rate
    return samples, int(rate)


def _too_long(name: str, max_seconds: float) -> InputError:
    return InputError(
        f"{name} holds more than {max_seconds:g} s of audio, the most accepted here "
        "(max_audio_seconds): send a shorter file"
    )
