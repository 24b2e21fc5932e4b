"""Phonemes as the mouth sees them: visemes, and the articulation target of each.

Every source of phonemes speaks IPA here (espeak-ng's phoneme events in IPA, text spelled out
by espeak-ng, the acoustic model's classes), so one table serves every language espeak-ng
speaks. A viseme is a class of sounds the eye cannot tell apart; each has a target shape:

- ``open``: lip aperture, 0 (shut) to 1 (jaw dropped, as for "a");
- ``width``: -1 (rounded and protruded, "u", "w") to +1 (spread, "i");
- ``closed``: the lips must meet (m, b, p), whatever the neighbours do;
- ``teeth``: the lower lip tucks under the upper teeth (f, v).

Targets are what a careful speaker reaches in the middle of the sound; coarticulation (how
neighbouring sounds pull on each other) is the articulation track's business.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Viseme:
    name: str
    open: float
    width: float
    closed: bool = False
    teeth: bool = False
    # How strongly the sound holds its shape against its neighbours (coarticulation): lips
    # must close for m/b/p and round for w, while t/k/s let the jaw follow the vowels.
    dominance: float = 1.0


# Order matters: it is the acoustic model's output order (see `rtlipsync.articulation.acoustic`).
VISEMES: tuple[Viseme, ...] = (
    Viseme("sil", 0.0, 0.0, dominance=0.6),
    Viseme("PBM", 0.0, 0.0, closed=True, dominance=3.0),
    Viseme("FV", 0.06, 0.1, teeth=True, dominance=2.0),
    Viseme("W", 0.12, -1.0, dominance=2.0),
    Viseme("U", 0.25, -0.9, dominance=1.5),
    Viseme("O", 0.55, -0.7, dominance=1.2),
    Viseme("A", 0.95, 0.1),
    Viseme("E", 0.55, 0.35),
    Viseme("I", 0.3, 0.8, dominance=1.2),
    Viseme("SH", 0.15, -0.5, dominance=1.2),
    Viseme("C", 0.2, 0.2, dominance=0.4),
)
INDEX = {v.name: i for i, v in enumerate(VISEMES)}
SILENCE = INDEX["sil"]

_CLASSES: dict[str, str] = {}
for _chars, _name in (
    ("pbmɸβʙ", "PBM"),
    ("fvɱʋ", "FV"),
    ("wɥʍ", "W"),
    ("uʊyʏɯ", "U"),
    ("oɔøœɒɵ", "O"),
    ("aɑæɐäɶ", "A"),
    ("eɛəɜɘɤʌɚɝ", "E"),
    ("iɪɨjʝ", "I"),
    ("ʃʒɕʑʂʐ", "SH"),
):
    for _c in _chars:
        _CLASSES[_c] = _name
_CONSONANTS = {"C", "PBM", "FV", "SH"}
# Marks that say nothing about the mouth's shape: stress, length, tones, diacritics.
_SKIP = set("ˈˌːˑ'\",%=_-.|‖‿ʰʲʷˠˤⁿˡ̞̝̠̟̹̜̥̬̩̯̪̺̻̃ᵝ0123456789")


def _letters(symbol: str) -> str:
    s = unicodedata.normalize("NFD", symbol)
    return "".join(
        c for c in s if c not in _SKIP and not unicodedata.combining(c) and not c.isspace()
    )


def classify(symbol: str) -> list[str]:
    """The viseme names an IPA phoneme passes through: one for most, two for a diphthong
    ("aɪ" → A then I) or an affricate ("tʃ" → SH); [] for a boundary or pause marker."""
    letters = _letters(symbol)
    if not letters:
        return []
    names = [_CLASSES.get(c, "C") for c in letters]
    vowels = [n for n in names if n not in _CONSONANTS]
    if len(vowels) >= 2:
        return [vowels[0], vowels[-1]]  # a diphthong glides from one to the other
    if vowels:
        return [vowels[0]]
    # A consonant written with several letters (tʃ, tɕh, ts) looks like its most visible one.
    visible = [n for n in names if n != "C"]
    return [visible[0] if visible else "C"]


def viseme_of(symbol: str) -> Viseme | None:
    """The viseme at the middle of ``symbol`` (None for a boundary marker)."""
    names = classify(symbol)
    return VISEMES[INDEX[names[len(names) // 2]]] if names else None


def is_bilabial(symbol: str) -> bool:
    return classify(symbol) == ["PBM"]
