"""The text-to-speech provider interface.

A provider turns text into `Speech`: mono int16 PCM at its own rate plus, where it knows them,
phoneme timings. Callers resample to the session rate at the edge (`Speech.at_rate`), so every
provider can speak at whatever rate it likes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from rtlipsync.media.audio import resample, to_float, to_int16
from rtlipsync.media.frames import Phoneme


@dataclass
class Speech:
    """One synthesized utterance."""

    pcm: np.ndarray  # int16 mono
    sample_rate: int
    phonemes: list[Phoneme] = field(default_factory=list)  # times from the start of pcm
    text: str = ""

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate

    def at_rate(self, rate: int) -> Speech:
        """The same speech resampled to ``rate`` (phoneme times are in seconds, unchanged)."""
        if rate == self.sample_rate:
            return self
        pcm = to_int16(resample(to_float(self.pcm), self.sample_rate, rate))
        return Speech(pcm, rate, list(self.phonemes), self.text)


@runtime_checkable
class TTSProvider(Protocol):
    """Anything that can speak text."""

    name: str

    def synthesize(self, text: str, voice: str | None = None) -> Speech: ...


class TTSError(Exception):
    """The TTS could not speak; the message says why, for the user."""


@runtime_checkable
class StreamingTTS(Protocol):
    """A provider that can hand over audio while it is still being made."""

    name: str

    def stream(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """16 kHz int16 pieces of the spoken text, as they arrive."""
        ...
