"""Speech → one mouth shape per 40 ms frame: the articulation layer every engine shares.

Input is what a speech chunk carries: PCM, and phoneme timings when the source knows them
(espeak-ng's own, or text aligned to the audio by `rtlipsync.articulation.align`). Each
10 ms hop gets a distribution over visemes: the phoneme said there when timings are known,
else what the acoustic model hears (`rtlipsync.articulation.acoustic`). From those the
mouth is built like a person's:

- **coarticulation**: each hop's shape is the dominance-weighted blend of the targets around
  it (Cohen and Massaro's model): lips that must close or round hold their shape, t/k/s let
  the jaw follow the vowels, and shapes flow into each other instead of stepping;
- **closures**: a bilabial shuts the lips on its frames even when it is 30 ms long, from
  `LEAD` before it is heard (the lips meet before the closure sounds);
- **anticipation**: the visible shape leads the sound by `LEAD` (real mouths start moving
  40-150 ms before the acoustic onset), inside the declared look-ahead;
- **silence**: where nothing is said the lips are closed and still.

Everything runs on 10 ms hops addressed by absolute sample index and is computed in whole
frames when a frame is taken, so a stream fed in any chunks gives exactly what a whole file
gives, and the cost comes one frame at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rtlipsync.articulation.acoustic import (
    DBFS_OFFSET,
    HOP,
    HOPS_PER_FRAME,
    WIN,
    NetStream,
    Normalizer,
    load_net,
    log_mel,
)
from rtlipsync.articulation.align import TextAligner
from rtlipsync.articulation.phonemes import INDEX, SILENCE, VISEMES, classify
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE, Phoneme

LEAD = 5  # hops (50 ms) the visible shape leads the sound
# How far a shape reaches its neighbours, in hops: the past side (carry-over) costs no
# latency, the future side (anticipation) does, so it is short and `LEAD` does the rest.
PAST = 10
AHEAD = 3
SIGMA = 3.0
FIRST_SAMPLE = -(WIN // 2 - HOP // 2)  # hop 0's window starts before sample 0
# Samples from a frame's start to the end of its last hop's window.
_FRAME_REACH = (HOPS_PER_FRAME - 1) * HOP + HOP // 2 + WIN // 2
_OPEN = np.array([v.open for v in VISEMES])
_WIDTH = np.array([v.width for v in VISEMES])
_DOM = np.array([v.dominance for v in VISEMES])
_PBM = INDEX["PBM"]
_FV = INDEX["FV"]
_KERNEL = np.exp(-0.5 * (np.arange(-PAST, AHEAD + 1) / SIGMA) ** 2)
RELEASE = 0.15  # seconds for the lips to close (to 1/e) once speech stops
ATTACK_PER_FRAME = 0.5  # how far the gate may open in one frame
RISE_PER_FRAME = 0.5  # how far the lips may part in one frame
INERTIA = 0.2  # share of the previous frame's shape kept in the next
LOUD_FLOOR = 0.55  # opening at the quietest speech, relative to the loudest
_RELEASE_PER_FRAME = float(np.exp(-FRAME_SAMPLES / SAMPLE_RATE / RELEASE))
HEARD_KEPT = 3000  # hops (30 s) of posteriors kept for words that come late
CONTRADICTED = 0.02  # an aligned viseme the model gives less than this, while sure of another
# What `MouthParams.cues` holds, in order.
CUES = (
    *(f"at_{v.name}" for v in VISEMES),  # viseme distribution over the frame's own hops
    *(f"near_{v.name}" for v in VISEMES),  # ... over the whole coarticulation window
    "loud",
    "gate",
    "bilabial",
)
EMOTION_SMILE = {"neutral": 0.0, "happy": 0.8, "concerned": -0.5, "sad": -0.7, "surprised": 0.2}


@dataclass
class MouthParams:
    """One frame's mouth: ``open`` 0..1, ``width`` -1 (rounded) .. +1 (spread), ``smile``
    -1..1 from the utterance's emotion, ``teeth`` 0..1 (lower lip under the upper teeth).

    ``cues`` is the evidence the shape was made from (`CUES` values: the viseme distribution
    at the frame and around it, loudness, speech gate, whether a bilabial shut the lips), for
    consumers that learn their own mapping, such as a bank of a person's real mouths.
    """

    open: float = 0.0
    width: float = 0.0
    smile: float = 0.0
    teeth: float = 0.0
    cues: np.ndarray | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {"open": self.open, "width": self.width, "smile": self.smile, "teeth": self.teeth}


class LevelTracker:
    """Loudness relative to this speaker here: 0 at the noise floor, 1 near the loud peaks.

    The floor is the quietest of the last two seconds (from a prior, so speech that starts
    at once is not taken for the floor); the reference follows loud peaks and falls 3 dB a
    second.
    """

    PRIOR_FLOOR = -60.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reference = -22.0
        self._recent: deque[float] = deque([self.PRIOR_FLOOR], maxlen=200)

    def update(self, db: float) -> float:
        self._recent.append(db)
        floor = min(self._recent)
        if db > self.reference:
            self.reference = db
        else:
            self.reference = max(self.reference - 0.03, floor + 15.0, -45.0)
        lo = max(floor + 12.0, self.reference - 30.0)
        hi = max(self.reference - 4.0, lo + 6.0)
        return float(np.clip((db - lo) / (hi - lo), 0.0, 1.0))


def _smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _shut(bilabial: np.ndarray, own: int) -> bool:
    """Whether the frame whose own hops start at index ``own`` of ``bilabial`` (per hop: a
    bilabial is said) shows shut lips: when a bilabial fills half of it, or the middle of one
    falls in it, so even a 30 ms closure shuts the lips on a frame."""
    mine = bilabial[own : own + HOPS_PER_FRAME]
    if mine.sum() * 2 >= HOPS_PER_FRAME:
        return True
    if not mine.any():
        return False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bilabial.astype(np.int8), [0]])))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if own <= (start + end - 1) // 2 < own + HOPS_PER_FRAME:
            return True
    return False


class Articulator:
    """Streaming speech → per-frame `MouthParams`, with a fixed look-ahead (`lookahead`).

    `push` audio (int16 or float) with its phoneme timings; `frames_ready` says how many
    frames can be taken; `take` returns the next. `finish` ends the utterance (the tail is
    padded with silence so every frame can be taken); `reset` drops everything (an
    interruption).
    """

    def __init__(self, language: str | None = None) -> None:
        self.net = load_net()
        self.aligner = TextAligner(language)
        self.future = self.net.future
        self._normalizer = Normalizer(self.net.prior)
        self._net = NetStream(self.net)
        self.levels = LevelTracker()
        self.reset()

    def _input_frames_for(self, frames: int) -> int:
        """Input frames the front end must have processed before ``frames`` can be taken."""
        last_hop = frames * HOPS_PER_FRAME - 1 + LEAD + AHEAD + self.future
        return last_hop // HOPS_PER_FRAME + 1

    @staticmethod
    def _samples_for(input_frames: int) -> int:
        """Audio samples the front end needs for ``input_frames`` whole frames of hops."""
        return (input_frames - 1) * FRAME_SAMPLES + _FRAME_REACH if input_frames > 0 else 0

    @property
    def lookahead(self) -> float:
        """Seconds of audio past a frame's end needed before it can be made."""
        return (self._samples_for(self._input_frames_for(1)) - FRAME_SAMPLES) / SAMPLE_RATE

    def reset(self) -> None:
        self._normalizer.reset()
        self._net.reset()
        self.levels.reset()
        self._audio = np.zeros(-FIRST_SAMPLE, np.float32)  # leading silence of hop 0
        self._audio_start = FIRST_SAMPLE  # absolute sample index of self._audio[0]
        self._received = 0
        self._in_frames = 0  # frames of hops pushed through the front end and network
        self._pending: list[np.ndarray] = []  # pushed audio not yet joined to self._audio
        self._loud_base = 0  # hop of self._loud[0]
        self._loud: list[float] = []  # per hop: loudness
        self._forced: dict[int, int] = {}  # hop → viseme index, from phoneme timings
        self._frames_out = 0  # frames computed
        self._smile: dict[int, float] = {}
        self._timed = False  # this utterance came with phoneme timings
        # Per hop: the viseme posteriors heard there, this utterance (kept whole for text
        # that arrives late), and how many the aligner has been given.
        self._heard: list[np.ndarray] = []
        self._heard_base = 0  # hop of self._heard[0]
        self._aligned = 0
        self._gate = 0.0  # how much the mouth may open: speech presence, released slowly
        self._last_open = 0.0
        self._inertia_o = self._inertia_w = 0.0
        self.aligner.reset()

    def push(
        self,
        pcm: np.ndarray,
        phonemes: tuple[Phoneme, ...] = (),
        emotion: str | None = None,
        text: str | None = None,
    ) -> None:
        """Take audio with what is known of it: exact ``phonemes`` (times from the start of
        ``pcm``), or ``text`` (words of the utterance, in order, to be aligned)."""
        start = self._received
        for p in phonemes:
            self._timed = True
            self.add_phoneme(p, start)
        if text and not self._timed:
            self.aligner.add_text(text)
        if emotion is not None:
            self._smile[start // FRAME_SAMPLES] = EMOTION_SMILE.get(emotion, 0.0)
        x = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        self._pending.append(x)  # joined once per frame taken: pushes cost no copy
        self._received += len(x)

    def add_phoneme(self, phoneme: Phoneme, offset_samples: int) -> None:
        """Mark the hops ``phoneme`` covers (its start is relative to ``offset_samples``).

        A diphthong's hops are split between the vowels it glides through.
        """
        names = classify(phoneme.symbol)
        if not names:
            return
        start = offset_samples / SAMPLE_RATE + phoneme.start
        edges = np.linspace(start, start + max(phoneme.duration, 0.01), len(names) + 1)
        for k, name in enumerate(names):
            a = int(np.ceil(edges[k] * 100 - 0.5))
            b = max(a + 1, int(np.ceil(edges[k + 1] * 100 - 0.5)))
            for h in range(max(a, self._frames_out * HOPS_PER_FRAME + LEAD - PAST), b):
                self._forced[h] = INDEX[name]

    def whole(self, pcm: np.ndarray, phonemes: tuple[Phoneme, ...] = ()) -> list[MouthParams]:
        """Every frame of one whole utterance (offline work): the same frames a stream of it
        gives, however it is chunked."""
        self.push(pcm, phonemes)
        self.finish()
        frames = []
        while self.frames_ready() > 0:
            frames.append(self.take())
        return frames

    def finish(self) -> None:
        """Pad silence so every pushed sample's frame (and its look-ahead) can be taken."""
        self.aligner.end_text()
        frames = -(-self._received // FRAME_SAMPLES)
        target = self._samples_for(self._input_frames_for(frames))
        pad = max(0, target - self._received)
        if pad:
            self._pending.append(np.zeros(pad, np.float32))
            self._received += pad

    def _available_input_frames(self) -> int:
        # Input frame k (hops 4k..4k+3) needs audio through hop 4k+3's window.
        last = self._received - _FRAME_REACH
        return last // FRAME_SAMPLES + 1 if last >= 0 else 0

    def _analyse(self, n_frames: int) -> None:
        """Run the front end, the network and the aligner through input frame n_frames - 1."""
        if self._pending:
            self._audio = np.concatenate([self._audio, *self._pending])
            self._pending.clear()
        while self._in_frames < n_frames:
            k = self._in_frames
            first = k * FRAME_SAMPLES + HOP // 2 - WIN // 2 - self._audio_start
            windows = np.lib.stride_tricks.sliding_window_view(
                self._audio[first : first + (HOPS_PER_FRAME - 1) * HOP + WIN], WIN
            )[::HOP]
            assert len(windows) == HOPS_PER_FRAME
            feats = log_mel(windows)
            logits = self._net.push(self._normalizer(feats))
            post = np.exp(logits - logits.max(axis=1, keepdims=True))
            post /= post.sum(axis=1, keepdims=True)
            # The network's output for input hop h describes hop h - future.
            first_hop = k * HOPS_PER_FRAME
            for i, (row, energy) in enumerate(zip(post, feats[:, -1], strict=True)):
                self._loud.append(self.levels.update(float(energy) * 4.343 - DBFS_OFFSET))
                if first_hop + i >= self.future:
                    self._heard.append(row)
            self._in_frames += 1
            end = self._heard_base + len(self._heard)
            if self.aligner.active:
                # Text that came after the audio started is aligned from its first hop kept.
                for h in range(max(self._aligned, self._heard_base), end):
                    self.aligner.step(h, self._heard[h - self._heard_base])
                self._aligned = end
            elif len(self._heard) > 2 * HEARD_KEPT:
                del self._heard[:HEARD_KEPT]  # no words yet: keep the last HEARD_KEPT hops
                self._heard_base += HEARD_KEPT
        keep_from = self._in_frames * FRAME_SAMPLES + HOP // 2 - WIN // 2
        cut = keep_from - self._audio_start
        if cut > 4 * WIN:
            self._audio = self._audio[cut:]
            self._audio_start = keep_from

    def frames_ready(self) -> int:
        """Frames the audio received so far (and their look-ahead) allow."""
        available = self._available_input_frames()
        # Frame f needs input frames through _input_frames_for(f + 1) - 1.
        reach = LEAD + AHEAD + self.future
        ready = (HOPS_PER_FRAME * available - reach) // HOPS_PER_FRAME
        return max(0, ready - self._frames_out)

    def take(self) -> MouthParams:
        """The next frame's mouth; call only when `frames_ready` > 0.

        The work is done here, one frame at a time, on the caller's clock (not in a burst
        when a whole utterance is pushed). Each frame is made from exactly the input its
        look-ahead needs, so what it shows never depends on when it is taken.
        """
        self._analyse(self._input_frames_for(self._frames_out + 1))
        return self._make()

    def _dist(self, hops: range) -> np.ndarray:
        """(len(hops), C) viseme distributions: timings where known, else the text aligned
        to the audio, else what is heard."""
        out = np.empty((len(hops), len(VISEMES)))
        aligned = self.aligner.path(hops) if self.aligner.active else [None] * len(hops)
        for i, h in enumerate(hops):
            forced = self._forced.get(h)
            if forced is None and aligned[i] is not None and h >= 0:
                heard = self._heard[h - self._heard_base]
                # The audio wins where it plainly says something else.
                if not (heard[aligned[i]] < CONTRADICTED and heard.max() > 0.9):
                    forced = aligned[i]
            if forced is not None:
                out[i] = 0.0
                out[i, forced] = 1.0
            elif h < 0:
                out[i] = 0.0
                out[i, SILENCE] = 1.0
            else:
                out[i] = self._heard[h - self._heard_base]
        return out

    def _make(self) -> MouthParams:
        f = self._frames_out
        first = f * HOPS_PER_FRAME + LEAD
        hops = range(first - PAST, first + HOPS_PER_FRAME + AHEAD)
        dist = self._dist(hops)
        weights = dist * _DOM  # (H, C)
        mass = weights.sum(axis=1)  # per hop
        shaped_o = weights @ _OPEN
        shaped_w = weights @ _WIDTH
        opens, widths = [], []
        for j in range(HOPS_PER_FRAME):
            k = _KERNEL
            sl = slice(j, j + PAST + AHEAD + 1)
            den = float(k @ mass[sl]) + 1e-9
            opens.append(float(k @ shaped_o[sl]) / den)
            widths.append(float(k @ shaped_w[sl]) / den)
        o, w = float(np.mean(opens)), float(np.mean(widths))
        centre = slice(PAST, PAST + HOPS_PER_FRAME)
        speech = 1.0 - float(dist[centre, SILENCE].mean())
        loud_at = [h - self._loud_base for h in hops[centre]]
        loud = float(np.mean([self._loud[i] if i >= 0 else 0.0 for i in loud_at]))
        # Speech opens the gate at once; in a pause it closes over RELEASE seconds, so the
        # lips stay parted through a breath between words and close in a real silence.
        # It opens over two frames, as a jaw does, rather than snapping.
        gate = min(float(_smoothstep(speech, 0.2, 0.7)), self._gate + ATTACK_PER_FRAME)
        self._gate = max(gate, self._gate * _RELEASE_PER_FRAME)
        o *= self._gate * (LOUD_FLOOR + (1.0 - LOUD_FLOOR) * loud)
        w *= self._gate
        # A little inertia, as lips and jaw have mass (closures below are not slowed).
        o = self._inertia_o = (1.0 - INERTIA) * o + INERTIA * self._inertia_o
        w = self._inertia_w = (1.0 - INERTIA) * w + INERTIA * self._inertia_w
        teeth = float(_smoothstep(dist[centre, _FV].mean(), 0.3, 0.6)) * self._gate
        # A bilabial shuts the lips from `LEAD` before it is heard (the lips meet before
        # the closure makes a sound, as every shape leads it) until its sound ends.
        said = dist[:, _PBM] > 0.5
        bilabial = _shut(said, PAST) or _shut(said, PAST - LEAD)
        if bilabial:
            o = teeth = 0.0  # a bilabial: the lips meet, however short it is
        cues = np.concatenate(
            [dist[centre].mean(axis=0), dist.mean(axis=0), [loud, self._gate, float(bilabial)]]
        )
        self._frames_out += 1
        self._trim()
        smile = self._smile_at(f)
        # The jaw opens over a couple of frames; lips may close faster (a bilabial).
        o = min(o, self._last_open + RISE_PER_FRAME)
        if o < 0.03:
            o = 0.0
        self._last_open = o
        return MouthParams(
            open=float(np.clip(o, 0, 1)),
            width=float(np.clip(w, -1, 1)),
            smile=smile,
            teeth=teeth,
            cues=cues,
        )

    def _smile_at(self, f: int) -> float:
        started = [k for k in self._smile if k <= f]
        if not started:
            return 0.0
        latest = max(started)
        for k in started:
            if k != latest:
                del self._smile[k]
        return self._smile[latest]

    def _trim(self) -> None:
        # Keep what the next frame's window still needs.
        oldest = self._frames_out * HOPS_PER_FRAME + LEAD - PAST
        drop = oldest - self._loud_base
        if drop > 0:
            del self._loud[:drop]
            self._loud_base += drop
        for h in [h for h in self._forced if h < oldest]:
            del self._forced[h]
        self.aligner.forget_before(oldest)
