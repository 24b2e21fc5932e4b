"""``rtlipsync eval bilabials``: do the lips shut on m, b and p?

espeak-ng speaks sentences dense in bilabials; its phoneme events (IPA, with their position in
the audio) are the truth. Each sentence is rendered twice through the engine a session uses:
from the audio alone (what ``render --audio`` does) and with the voice's own timings (what
``render --text`` does). At the middle frame of every m/b/p at least 30 ms long, the rendered
lips count as shut when the inner-lip gap (`rtlipsync.face.landmarks.lip_gap`, read from the
rendered picture) is under 0.3 of the median gap at the middles of that render's vowels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rtlipsync.articulation.phonemes import INDEX, classify, is_bilabial
from rtlipsync.engines.base import LipSyncEngine, render_speech
from rtlipsync.errors import InputError
from rtlipsync.face.avatar import Avatar
from rtlipsync.face.landmarks import FaceLandmarker, lip_gap
from rtlipsync.media.frames import FPS, SAMPLE_RATE, Phoneme

MIN_DURATION = 0.03  # seconds: shorter bilabials are not counted
SHUT = 0.3  # of the median gap at vowel middles
GOALS = {"audio": 0.8, "text": 0.95}
_VOWELS = {INDEX[n] for n in ("A", "E", "I", "O", "U")}

# Sentences the project checks itself on; others are measured on sentences it never saw.
SENTENCES = (
    "Bob and Pam may buy a map of the bamboo market.",
    "My mother made a plum pie for the bishop's ball.",
    "Please bring me a bumper crop of maple apples.",
    "Maybe the mob will bump into Bill at the pub.",
    "The pop band played many upbeat numbers, and the public loved them.",
    "Mum put the baby in the pram by the lamp.",
    "Peter picked a peck of pickled peppers.",
    "A big brown bear bumped the box of plums.",
)


@dataclass
class SentenceReport:
    text: str
    shut: int
    total: int

    @property
    def share(self) -> float | None:
        return self.shut / self.total if self.total else None


@dataclass
class BilabialReport:
    mode: str  # "audio" or "text"
    sentences: list[SentenceReport]

    @property
    def shut(self) -> int:
        return sum(s.shut for s in self.sentences)

    @property
    def total(self) -> int:
        return sum(s.total for s in self.sentences)

    @property
    def share(self) -> float:
        return self.shut / self.total if self.total else 0.0

    @property
    def median(self) -> float:
        shares = [s.share for s in self.sentences if s.share is not None]
        return float(np.median(shares)) if shares else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "shut": self.shut,
            "total": self.total,
            "share": self.share,
            "median": self.median,
            "sentences": [
                {"text": s.text, "shut": s.shut, "total": s.total, "share": s.share}
                for s in self.sentences
            ],
        }


def middles(phonemes: Iterable[Phoneme]) -> tuple[list[int], list[int]]:
    """Frames at the middle of each bilabial (at least `MIN_DURATION` long) and of each
    vowel."""
    bilabials, vowels = [], []
    for p in phonemes:
        frame = int((p.start + p.duration / 2) * FPS)
        if is_bilabial(p.symbol) and p.duration >= MIN_DURATION:
            bilabials.append(frame)
        elif (names := classify(p.symbol)) and INDEX[names[0]] in _VOWELS:
            vowels.append(frame)
    return bilabials, vowels


def score(
    images: Sequence[np.ndarray], phonemes: Sequence[Phoneme], text: str, lm: FaceLandmarker
) -> SentenceReport:
    """Count the shut bilabials in a render's frames."""
    bilabials, vowels = middles(phonemes)

    def gap(frame: int) -> float:
        if not 0 <= frame < len(images):
            return np.nan
        points = lm.detect(images[frame])
        return np.nan if points is None else lip_gap(points)

    vowel_gaps = [g for g in (gap(f) for f in vowels) if not np.isnan(g)]
    if not vowel_gaps:
        raise InputError(f"no face found at the vowels of {text!r}")
    reference = float(np.median(vowel_gaps))
    gaps = [gap(f) / reference if reference > 0 else np.nan for f in bilabials]
    shut = sum(1 for g in gaps if not np.isnan(g) and g < SHUT)
    return SentenceReport(text, shut, len(bilabials))


def measure_bilabials(
    avatar: Avatar,
    engine: LipSyncEngine,
    sentences: Sequence[str] = SENTENCES,
    voice: str | None = None,
    progress: bool = False,
) -> dict[str, BilabialReport]:
    """Render each sentence from its audio alone and from its timings, and score both."""
    from tqdm import tqdm

    from rtlipsync.speech.espeak import EspeakTTS

    tts = EspeakTTS()
    reports = {"audio": BilabialReport("audio", []), "text": BilabialReport("text", [])}
    with FaceLandmarker(video=False) as lm:
        for text in tqdm(sentences, desc="bilabials", unit="sentence", disable=not progress):
            speech = tts.synthesize(text, voice).at_rate(SAMPLE_RATE)
            for mode, timings in (("audio", ()), ("text", speech.phonemes)):
                stream = engine.open_stream(avatar)
                frames = render_speech(stream, speech.pcm, timings, chunk_samples=SAMPLE_RATE // 4)
                images = [f.image for f in frames]
                reports[mode].sentences.append(score(images, speech.phonemes, text, lm))
    return reports
