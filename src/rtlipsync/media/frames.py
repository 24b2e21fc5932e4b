"""The core media objects that travel between brains, engines and transports.

Everything in a session runs on one timeline: 16 kHz mono int16 audio in 20 ms packets and
25 fps video, so one video frame carries exactly two audio packets (640 samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
FPS = 25
PACKET_SAMPLES = SAMPLE_RATE // 50  # 20 ms
FRAME_SAMPLES = SAMPLE_RATE // FPS  # 40 ms, two packets


@dataclass(frozen=True)
class Phoneme:
    """One phoneme said in a speech chunk.

    ``start`` is in seconds from the start of the chunk that carries it, so phonemes keep
    their meaning however chunks are cut and queued.
    """

    symbol: str
    start: float
    duration: float


@dataclass
class SpeechChunk:
    """Speech for the lip-sync engine: mono int16 PCM at 16 kHz, usually 20 ms of it.

    ``phonemes`` are exact timings when the TTS knows them (the engine then shapes the mouth
    from them rather than guessing from sound). ``end_of_utterance`` tells the engine no more
    audio follows for now, so it may flush its look-ahead with silence.
    """

    pcm: np.ndarray
    phonemes: tuple[Phoneme, ...] = ()
    text: str | None = None
    end_of_utterance: bool = False
    emotion: str | None = None

    def __post_init__(self) -> None:
        pcm = np.asarray(self.pcm)
        if pcm.ndim != 1 or pcm.dtype != np.int16:
            raise ValueError(
                f"SpeechChunk.pcm must be 1-D int16 at {SAMPLE_RATE} Hz, "
                f"got {pcm.dtype} {pcm.shape}"
            )
        self.pcm = pcm

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


@dataclass
class AVFrame:
    """One 40 ms step of output: the image to show and the audio it shows."""

    image: np.ndarray  # H x W x 3, uint8, BGR
    audio: np.ndarray  # FRAME_SAMPLES int16 samples at SAMPLE_RATE
    index: int  # position on the stream's timeline; pts = index / FPS
    speaking: bool = False
    mouth: dict[str, float] = field(default_factory=dict)  # the mouth parameters shown

    @property
    def pts(self) -> float:
        return self.index / FPS


class StateMessages:
    """What a page shows beside the picture (the speaking dot, the caption), as a message to
    send with the frame that changed it.

    Polled every 250 ms, a caption came up to a quarter of a second late, and one shorter
    than a poll could be missed altogether; sent with the frame, it is shown when that frame
    plays. ``caption`` reads the session's current caption.
    """

    def __init__(self, caption: Callable[[], str]) -> None:
        self._caption = caption
        self._last: tuple[bool, str] = (False, "")

    def after(self, frame: AVFrame) -> dict[str, object] | None:
        """``{"type": "state", "speaking", "caption", "frame"}`` when ``frame`` changed
        either, else None."""
        now = (frame.speaking, self._caption())
        if now == self._last:
            return None
        self._last = now
        return {"type": "state", "speaking": now[0], "caption": now[1], "frame": frame.index}


def chunk_speech(
    pcm: np.ndarray,
    phonemes: Sequence[Phoneme] = (),
    chunk_samples: int = PACKET_SAMPLES,
    text: str | None = None,
    emotion: str | None = None,
) -> Iterator[SpeechChunk]:
    """Cut one utterance into 20 ms chunks, each carrying the phonemes that start in it.

    The last chunk is marked ``end_of_utterance``. Phoneme times are given from the start of
    ``pcm`` and rewritten relative to the chunk that carries them.
    """
    pcm = np.asarray(pcm, dtype=np.int16)
    ordered = sorted(phonemes, key=lambda p: p.start)
    n = max(1, -(-len(pcm) // chunk_samples))
    k = 0
    for i in range(n):
        t0 = i * chunk_samples / SAMPLE_RATE
        t1 = (i + 1) * chunk_samples / SAMPLE_RATE
        mine = []
        while k < len(ordered) and (ordered[k].start < t1 or i == n - 1):
            p = ordered[k]
            mine.append(Phoneme(p.symbol, p.start - t0, p.duration))
            k += 1
        yield SpeechChunk(
            pcm=pcm[i * chunk_samples : (i + 1) * chunk_samples],
            phonemes=tuple(mine),
            text=text if i == 0 else None,
            end_of_utterance=i == n - 1,
            emotion=emotion,
        )
