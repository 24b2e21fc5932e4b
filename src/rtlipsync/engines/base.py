"""The lip-sync engine protocol every engine implements.

An engine prepares an avatar once (`prepare`, slow, cached on disk) and then opens one
`EngineStream` per session (`open_stream`, fast). A stream is the only thing a session or an
offline render talks to:

- `EngineStream.push` takes speech chunks (20 ms of 16 kHz int16 PCM, optional phonemes);
- `EngineStream.frames` yields every frame that is ready, each a 40 ms `AVFrame` carrying the
  image and exactly the audio it shows, once the engine has its `lookahead` of future audio
  (or the utterance has ended). A caller may stop after any frame (a live clock takes one per
  tick): a frame is taken when it is yielded, and frames made but not yet yielded wait for the
  next call rather than being made again;
- `EngineStream.idle` yields one frame of the idle loop with silence, for when nothing is said;
- `EngineStream.reset` drops everything queued at once (an interruption); the face goes back to
  idle without a jump because the idle loop position keeps running.

Engines never touch transports or clocks: pacing is the caller's business. Batch rendering is
the same stream fed a whole file, so streaming and offline output are the same frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rtlipsync.face.avatar import Avatar
from rtlipsync.media.frames import PACKET_SAMPLES, AVFrame, Phoneme, SpeechChunk, chunk_speech


@runtime_checkable
class EngineStream(Protocol):
    """One session's view of an engine over one avatar."""

    lookahead: float  # seconds of future audio needed before a frame can be made

    def push(self, chunk: SpeechChunk) -> None: ...

    def frames(self) -> Iterator[AVFrame]: ...

    def idle(self) -> AVFrame: ...

    def reset(self) -> None: ...

    @property
    def pending(self) -> float:
        """Seconds of pushed speech not yet turned into frames."""
        ...


@runtime_checkable
class LipSyncEngine(Protocol):
    """A way of turning speech into mouth frames for a prepared avatar."""

    name: str

    def prepare(self, avatar: Avatar, **options: Any) -> None:
        """Add this engine's assets to an avatar (no-op if already there)."""
        ...

    def open_stream(self, avatar: Avatar) -> EngineStream: ...


def render_speech(
    stream: EngineStream,
    pcm: np.ndarray,
    phonemes: Iterable[Phoneme] = (),
    emotion: str | None = None,
    chunk_samples: int = PACKET_SAMPLES,
) -> Iterator[AVFrame]:
    """Feed one whole utterance through a stream and yield all its frames (batch rendering).

    Engines give the same frames however the audio is chunked, so offline work may pass
    larger ``chunk_samples`` to spend less time per call.
    """
    for chunk in chunk_speech(pcm, tuple(phonemes), chunk_samples, emotion=emotion):
        stream.push(chunk)
        yield from stream.frames()
    yield from stream.frames()
