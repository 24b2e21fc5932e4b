"""Known words, unknown timing: align text to the audio actually played, as both stream in.

Chat replies spoken by another TTS, the Realtime service's transcript, repeat mode with any
voice: the words are known, the timings are not. The text is spelled out in phonemes by
espeak-ng (any of its languages; the script picks the voice), the phonemes become a left-to-
right chain of viseme states (each at least `MIN_HOPS` long, an optional pause between any
two), and the chain is aligned to the acoustic model's per-hop viseme posteriors by Viterbi
decoding as hops arrive. Each frame reads the best path so far, so nothing waits for the end
of a reply.

When the text and the audio disagree (the service paraphrases, a word is dropped or added)
the audio wins: the path may leave the chain for "free" hops, where the mouth follows what the
model hears, may skip a state the audio does not have, and a state the audio plainly
contradicts is not forced on the mouth.
"""

from __future__ import annotations

import re

import numpy as np

from rtlipsync.articulation.phonemes import INDEX, SILENCE, classify
from rtlipsync.errors import InputError
from rtlipsync.speech.espeak import VOICES, EspeakTTS
from rtlipsync.speech.sentences import language_of

MIN_HOPS = 2  # shortest phoneme the chain allows, in 10 ms hops
FREE = -4.5  # log-penalty per hop off the chain (audio the text does not explain)
SKIP = -6.0  # log-penalty for skipping a state of the chain (text the audio lacks)
PAUSE_IN = -1.0  # log-penalty for pausing between two phonemes
FLOOR = 1e-3  # posterior floor inside the log
WINDOW = 40  # groups scored past the best path's (a hop moves the path one at most)
BEHIND = 10  # groups scored before it
_WORD_END = re.compile(r"[\s,.;:!?、。，！？；：…]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


# Scripts beyond the product's own three languages (`language_of`), and the espeak-ng
# voice that reads each, for text whose language nobody said.
_SCRIPTS = (
    (re.compile(r"[\uac00-\ud7af]"), "ko"),
    (re.compile(r"[\u0400-\u04ff]"), "ru"),
    (re.compile(r"[\u0370-\u03ff]"), "el"),
    (re.compile(r"[\u0590-\u05ff]"), "he"),
    (re.compile(r"[\u0600-\u06ff]"), "ar"),
    (re.compile(r"[\u0900-\u097f]"), "hi"),
    (re.compile(r"[\u0e00-\u0e7f]"), "th"),
)


def voice_for(text: str) -> str:
    """An espeak-ng voice for ``text`` from its script (Latin script reads as English)."""
    language = language_of(text)
    if language != "en":
        return VOICES[language]
    for pattern, voice in _SCRIPTS:
        if pattern.search(text):
            return voice
    return VOICES["en"]


def text_visemes(text: str, language: str | None = None) -> list[int]:
    """The viseme sequence of ``text`` as espeak-ng pronounces it in ``language`` (any
    espeak-ng voice; by default the one for its script), pauses left out."""
    text = text.strip()
    if not text or not any(c.isalnum() for c in text):
        return []
    try:
        speech = EspeakTTS().synthesize(text, language or voice_for(text))
    except InputError:  # a language espeak-ng lacks: read it with the script's voice
        speech = EspeakTTS().synthesize(text, voice_for(text))
    out: list[int] = []
    for p in speech.phonemes:
        for name in classify(p.symbol):
            index = INDEX[name]
            if index != SILENCE and (not out or out[-1] != index):
                out.append(index)
    return out


class TextAligner:
    """Fixed-memory streaming Viterbi of known text against viseme posteriors.

    States come in groups of `MIN_HOPS` (one group per viseme of the text), then one pause
    state after the group. `add_text` appends words; `step` takes one hop's posteriors;
    `path` reads the viseme the best path so far assigns to recent hops (None where the path
    is off the chain or the audio contradicts the text).
    """

    def __init__(self, language: str | None = None) -> None:
        self.language = language
        self.reset()

    def reset(self) -> None:
        self._pending = ""  # text not yet turned into states (an unfinished word)
        self._visemes: list[int] = []  # one per group
        self._scores = np.zeros(0)  # per state
        # Per group k, plus one: off the chain before group k (after group k - 1).
        self._free = np.full(1, -np.inf)
        # Per hop: (first state scored, back-pointers, first group scored, free back-pointers)
        self._history: list[tuple[int, np.ndarray, int, np.ndarray]] = []
        self._best = -1  # the best state now (-2 - k: the free state before group k)
        self._first_hop: int | None = None
        self._focus = 0  # the group the best path is in
        self._structures: dict[tuple[int, int], tuple] = {}

    @property
    def active(self) -> bool:
        return bool(self._visemes) or bool(self._pending.strip())

    # -- text ----------------------------------------------------------------------------
    def add_text(self, text: str) -> None:
        """More words of the utterance; a word cut off at the end waits for the rest."""
        self._pending += text
        cut = max((m.end() for m in _WORD_END.finditer(self._pending)), default=0)
        if _CJK.search(self._pending):
            cut = len(self._pending)  # no spaces to wait for: every character is a unit
        if cut:
            self._extend(text_visemes(self._pending[:cut], self.language))
            self._pending = self._pending[cut:]

    def end_text(self) -> None:
        """The text is complete: spell out what was held back."""
        if self._pending.strip():
            self._extend(text_visemes(self._pending, self.language))
        self._pending = ""

    def _extend(self, visemes: list[int]) -> None:
        if self._visemes and visemes and visemes[0] == self._visemes[-1]:
            visemes = visemes[1:]
        if not visemes:
            return
        if not self._visemes:
            visemes = [SILENCE, *visemes]  # the quiet before the first word
        groups = len(visemes)
        # Layout per group g: MIN_HOPS phoneme states, then a pause state.
        per = MIN_HOPS + 1
        self._scores = np.concatenate([self._scores, np.full(groups * per, -np.inf)])
        self._free = np.concatenate([self._free, np.full(groups, -np.inf)])  # groups + 1
        self._visemes += visemes

    # -- audio ---------------------------------------------------------------------------
    def step(self, hop: int, posterior: np.ndarray) -> None:
        """Advance the alignment by hop ``hop`` (absolute index) with its posteriors.

        Only groups from `BEHIND` before the best one to `WINDOW` past it are scored, so a
        long reply costs no more per hop than a short one.
        """
        if not self._visemes:
            return
        per = MIN_HOPS + 1
        groups = len(self._visemes)
        logp = np.log(posterior + FLOOR)
        if self._first_hop is None:
            self._first_hop = hop
            self._scores[:] = -np.inf
            self._free[:] = -np.inf
            # Before the first hop: at the chain's start, or in a pause before it.
            prev = np.full(len(self._scores), -np.inf)
            free_prev = np.full(groups + 1, -np.inf)
            start_bonus = True
        else:
            prev, free_prev = self._scores, self._free
            start_bonus = False
        g0 = max(0, self._focus - BEHIND)
        g1 = min(groups, self._focus + WINDOW)
        lo, hi = g0 * per, g1 * per
        src, pen, free_src, back_free = self._structure(g0, g1)
        vis = np.asarray(self._visemes[g0:g1])
        emit = np.repeat(logp[vis], per).reshape(g1 - g0, per)
        emit[:, MIN_HOPS] = logp[SILENCE]  # the pause state
        prev_ext = np.append(prev, -np.inf)  # index -1: "no such state"
        free_ext = np.append(free_prev, -np.inf)
        scores = np.vstack([prev_ext[src] + pen, free_ext[free_src][None]])
        if start_bonus:
            first = np.full(hi - lo, -np.inf)
            if lo == 0:
                first[0] = 0.0  # in the quiet before the first word
                first[per] = 0.0  # or speaking from the first hop
            scores = np.vstack([scores, first[None]])
        which = np.argmax(scores, axis=0)
        cols = np.arange(hi - lo)
        new = scores[which, cols] + emit.ravel()
        back = np.where(which < len(src), src[np.minimum(which, len(src) - 1), cols], back_free)
        if start_bonus:
            back = np.where(which == len(src) + 1, -1, back)
        # Free state k (before group k): stay free, or leave the chain after group k-1's
        # last phoneme; at the start, the audio may begin before the text does.
        k = np.arange(g0, g1 + 1)
        from_last = (k - 1) * per + MIN_HOPS - 1
        leave = np.where(k > 0, prev_ext[np.where(k > 0, from_last, -1)], -np.inf)
        stay = free_prev[g0 : g1 + 1]
        free_back = np.where(stay >= leave, -2 - k, from_last)
        if start_bonus:
            stay = np.where(k == 0, 0.0, stay)
            free_back = np.where(k == 0, -1, free_back)
        free_new = np.maximum(stay, leave) + float(logp.max()) + FREE
        top = max(float(new.max()), float(free_new.max()))
        self._scores = np.full(len(prev), -np.inf)
        self._scores[lo:hi] = new - top
        self._free = np.full(groups + 1, -np.inf)
        self._free[g0 : g1 + 1] = free_new - top
        best = int(np.argmax(self._scores))
        best_free = int(np.argmax(self._free))
        on_chain = self._scores[best] >= self._free[best_free]
        self._focus = best // per if on_chain else min(best_free, groups - 1)
        self._history.append((lo, back, g0, free_back))
        self._best = best if on_chain else -2 - best_free

    def _structure(self, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The chain's transitions into the states of groups g0..g1 (cached per window):
        for each state, its candidate predecessors (-1: none) and their costs, and the free
        state it may come from."""
        key = (g0, g1)
        if key in self._structures:
            return self._structures[key]
        per = MIN_HOPS + 1
        idx = np.arange(g0 * per, g1 * per)
        group, pos = idx // per, idx % per
        entering = pos == 0
        last_ph = (group - 1) * per + MIN_HOPS - 1
        none = -np.ones_like(idx)
        # Stay; the previous state in the group (the pause is entered from the group's last
        # phoneme, at a cost); enter group g from group g-1's last phoneme or its pause, or
        # from two groups back (a skip).
        src = np.stack([
            idx,
            np.where(pos > 0, idx - 1, none),
            np.where(entering & (group > 0), last_ph, none),
            np.where(entering & (group > 0), last_ph + 1, none),
            np.where(entering & (group > 1), last_ph - per, none),
        ])  # fmt: skip
        pen = np.zeros(src.shape)
        pen[1, pos == MIN_HOPS] = PAUSE_IN
        pen[4] = SKIP
        # Or come onto the chain at group g from the free state before it.
        free_src = np.where(entering, group, none)
        back_free = -2 - group  # -2 - k stands for "the free state before group k"
        if len(self._structures) > 64:
            self._structures.clear()
        self._structures[key] = (src, pen, free_src, back_free)
        return self._structures[key]

    def path(self, hops: range) -> list[int | None]:
        """The viseme the best path so far gives each of ``hops`` (absolute indices), None
        where it is off the chain, before the text, or not yet reached."""
        out: list[int | None] = [None] * len(hops)
        if not self._history or self._first_hop is None:
            return out
        per = MIN_HOPS + 1
        t = self._first_hop + len(self._history) - 1  # the last hop stepped
        state = self._best
        want = {h: i for i, h in enumerate(hops)}
        oldest = max(hops[0] if len(hops) else t, self._first_hop)
        while t >= oldest:
            if t in want and state >= 0:
                g, p = divmod(state, per)
                out[want[t]] = SILENCE if p == MIN_HOPS else self._visemes[g]
            s0, back, g0, free_back = self._history[t - self._first_hop]
            state = int(back[state - s0]) if state >= 0 else int(free_back[-2 - state - g0])
            if state == -1:
                break
            t -= 1
        return out

    def forget_before(self, hop: int) -> None:
        """Drop back-pointers no reading will need (kept bounded for long replies)."""
        if self._first_hop is None:
            return
        drop = hop - self._first_hop - 1
        if drop > 0 and drop < len(self._history):
            # Backtraces never go below the oldest hop a frame reads; rebase the history.
            del self._history[:drop]
            self._first_hop += drop
