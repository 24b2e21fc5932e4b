"""From speech to mouth shapes: audio analysis and phoneme visemes.

The mouth is described per 40 ms frame by three numbers:

- ``open``: lip opening, 0 (closed) to 1 (wide open, as for "a");
- ``width``: -1 (rounded, as for "o"/"u") to +1 (spread, as for "i"/"e");
- ``smile``: -1 (corners down) to +1 (corners up), from the utterance's emotion.

From audio alone (any language) the opening follows voiced loudness above an adaptive noise
floor, so silence and noise keep the lips closed; the jaw follows a first-formant estimate and
the lip spread a second-formant estimate; the quiet of a closure (m, b, p) shuts the lips. (A
nasal-murmur detector was tried and dropped: low-pitched voices fooled it.) When the TTS gives
exact phoneme timings, the shapes come from a viseme table instead (lips shut on m/b/p,
rounded on o/u, spread on i/e, open on a), scaled by the audio's loudness.

Analysis runs on fixed 10 ms hops addressed by absolute sample index, so a stream fed in 20 ms
chunks computes exactly what a whole file computes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE, Phoneme

HOP = 160  # 10 ms
WIN = 512  # 32 ms analysis window, centred on the hop
HOPS_PER_FRAME = FRAME_SAMPLES // HOP  # 4
# Audio past the end of a frame that its last hop's window needs.
WINDOW_OVERHANG = HOP // 2 + WIN // 2 - HOP  # 176 samples, 11 ms
SMOOTH = np.array([1.0, 3.0, 5.0, 3.0, 1.0]) / 13.0  # zero-phase, two frames each side
LOOKAHEAD_FRAMES = len(SMOOTH) // 2

_FREQS = np.fft.rfftfreq(WIN, 1.0 / SAMPLE_RATE)
_BAND = {
    "f1": (_FREQS >= 250) & (_FREQS < 1000),
    "high": (_FREQS >= 1800) & (_FREQS < 3500),
    "voice": (_FREQS >= 250) & (_FREQS < 3500),
}
_WINDOW = np.hanning(WIN).astype(np.float32)
_WINDOW_ENERGY = float((_WINDOW.astype(np.float64) ** 2).sum())
_WINDOW_AC = np.fft.irfft(np.abs(np.fft.rfft(_WINDOW, n=2 * WIN)) ** 2)[:WIN] / _WINDOW_ENERGY


@dataclass
class MouthParams:
    open: float = 0.0
    width: float = 0.0
    smile: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"open": self.open, "width": self.width, "smile": self.smile}


def _smoothstep(x: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def hop_features(frames: np.ndarray) -> np.ndarray:
    """Per-hop features for windows ``frames`` (n, WIN) of float audio.

    Columns: level dB, voicing (0..1), F1 centroid Hz, high share (0..1): the part of the
    voice's energy at 1800-3500 Hz, where front vowels (i, e) put their second formant.
    """
    # Loudness is the energy of the formant band (250-3500 Hz): every voice puts its vowels
    # there, while mains hum, rumble and DC have nothing there.
    x = frames - frames.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(x * _WINDOW, n=2 * WIN, axis=1)) ** 2
    spec = power[:, ::2]  # the WIN-point spectrum's bins
    db = 10.0 * np.log10(2 * spec[:, _BAND["voice"]].sum(axis=1) / (WIN * _WINDOW_ENERGY) + 1e-10)
    # Voicing: the normalised autocorrelation peak over 80-400 Hz pitch lags, divided by the
    # window's own autocorrelation (Boersma's correction), so a steady vowel reads close to 1.
    ac = np.fft.irfft(power, axis=1)[:, :WIN]
    lags = np.arange(SAMPLE_RATE // 400, SAMPLE_RATE // 80)
    r = ac[:, lags] / (ac[:, :1] + 1e-12) / _WINDOW_AC[lags]
    voicing = np.clip(r.max(axis=1), 0.0, 1.0)
    f1_spec = spec[:, _BAND["f1"]]
    f1 = (f1_spec * _FREQS[_BAND["f1"]]).sum(axis=1) / (f1_spec.sum(axis=1) + 1e-12)
    high = spec[:, _BAND["high"]].sum(axis=1) / (spec[:, _BAND["voice"]].sum(axis=1) + 1e-12)
    return np.stack([db, voicing, f1, high], axis=1)


class LevelTracker:
    """Adaptive speech level and noise floor, so loudness means "loud for this speaker here".

    The floor is the minimum level over the last two seconds, starting from a prior of
    `PRIOR_FLOOR` until two seconds have been heard (so speech that starts at once is not
    mistaken for the floor); it rises under steady noise. The reference follows voiced peaks
    and decays by 3 dB a second.
    """

    PRIOR_FLOOR = -60.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reference = -22.0
        self._recent: deque[float] = deque([self.PRIOR_FLOOR], maxlen=200)

    def update(self, db: float, voiced: float) -> float:
        """Take one hop, return its loudness in 0..1."""
        self._recent.append(db)
        floor = min(self._recent)
        if voiced > 0.5 and db > self.reference:
            self.reference = db
        else:
            self.reference = max(self.reference - 0.03, floor + 15.0, -45.0)
        lo = max(floor + 12.0, self.reference - 30.0)
        hi = max(self.reference - 4.0, lo + 6.0)
        return float(np.clip((db - lo) / (hi - lo), 0.0, 1.0))


def audio_params(hops: np.ndarray, loudness: np.ndarray) -> np.ndarray:
    """Mouth (open, width) for one frame from its hops' features and loudness."""
    db, voicing, f1, high = hops.T
    weight = 10 ** (db / 10)
    weight = weight / (weight.sum() + 1e-12)
    voiced = float((_smoothstep(voicing, 0.3, 0.6) * weight).sum())
    loud = float(loudness.mean())
    f1m = float((f1 * weight).sum())
    highm = float((high * weight).sum())
    # The jaw drops further on open vowels (high first formant), but only a little: formant
    # estimates from a 32 ms window are noisy, and loudness is the cue that never lies.
    jaw = 0.8 + 0.2 * float(_smoothstep(f1m, 380.0, 720.0))
    openness = loud**1.2 * voiced * jaw
    # Spread for front vowels (strong 1800-3500 Hz), rounded for back vowels with a low first
    # formant (o, u); open back vowels (a) stay neutral. Measured on espeak-ng's vowels:
    # high share 0.26-0.32 for i/e, <= 0.08 for a/o/u; F1 centroid ~350 Hz for o/u, >500 for a.
    spread = float(_smoothstep(highm, 0.10, 0.25))
    rounded = float((1 - _smoothstep(highm, 0.08, 0.15)) * (1 - _smoothstep(f1m, 420.0, 520.0)))
    width = (spread - rounded) * min(1.0, 2.0 * voiced)
    return np.array([openness, width])


# Visemes: (open, width) for espeak-ng phoneme mnemonics, matched on the longest prefix after
# stress marks are stripped; anything unknown falls back to its first letter, then to a
# neutral half-open shape. Closures (m, b, p) are what the eye checks first.
VISEMES: dict[str, tuple[float, float]] = {
    # bilabial closure and labiodental
    "m": (0.0, 0.0),
    "b": (0.0, 0.0),
    "p": (0.0, 0.0),
    "f": (0.08, 0.1),
    "v": (0.08, 0.1),
    # open vowels
    "a": (0.9, 0.1),
    "A": (0.95, 0.0),
    "aI": (0.85, 0.2),
    "aU": (0.85, -0.3),
    "&": (0.8, 0.3),
    "V": (0.7, 0.0),
    "0": (0.75, -0.4),
    "O": (0.7, -0.6),
    "Q": (0.75, -0.4),
    # mid and front vowels
    "e": (0.55, 0.6),
    "E": (0.6, 0.5),
    "eI": (0.5, 0.6),
    "@": (0.4, 0.0),
    "3": (0.45, -0.2),
    "i": (0.25, 0.9),
    "I": (0.3, 0.7),
    "y": (0.25, -0.8),
    # rounded vowels
    "o": (0.55, -0.8),
    "oU": (0.5, -0.8),
    "u": (0.25, -1.0),
    "U": (0.3, -0.8),
    # consonants
    "w": (0.15, -1.0),
    "r": (0.25, -0.4),
    "l": (0.3, 0.2),
    "j": (0.2, 0.6),
    "s": (0.1, 0.5),
    "z": (0.1, 0.5),
    "S": (0.15, -0.5),
    "Z": (0.15, -0.5),
    "tS": (0.15, -0.4),
    "dZ": (0.15, -0.4),
    "T": (0.15, 0.3),
    "D": (0.15, 0.3),
    "t": (0.15, 0.3),
    "d": (0.15, 0.3),
    "n": (0.15, 0.2),
    "N": (0.25, 0.1),
    "k": (0.25, 0.1),
    "g": (0.25, 0.1),
    "h": (0.35, 0.0),
    "x": (0.3, 0.0),
    "X": (0.3, 0.0),
    "_": (0.0, 0.0),
}
_VISEME_KEYS = sorted(VISEMES, key=len, reverse=True)


def viseme(symbol: str) -> tuple[float, float]:
    """(open, width) for a phoneme symbol."""
    s = symbol.strip().lstrip("'\",%=").replace(":", "")
    if not s or s.startswith("_"):
        return VISEMES["_"]
    for key in _VISEME_KEYS:
        if s.startswith(key):
            return VISEMES[key]
    return 0.4, 0.0


class VisemeTrack:
    """Phoneme timings on the stream's sample clock, sampled at frame times.

    Each phoneme holds its shape over its middle; shapes blend linearly between phoneme
    centres, which is enough coarticulation once the frame smoothing runs on top.
    """

    def __init__(self) -> None:
        self._points: list[tuple[float, float, float, float]] = []  # (start, end, open, width)

    def reset(self) -> None:
        self._points.clear()

    def add(self, phoneme: Phoneme, offset_samples: int) -> None:
        start = offset_samples / SAMPLE_RATE + phoneme.start
        o, w = viseme(phoneme.symbol)
        self._points.append((start, start + max(phoneme.duration, 0.01), o, w))

    def forget_before(self, t: float) -> None:
        while len(self._points) > 2 and self._points[1][1] < t:
            self._points.pop(0)

    def sample(self, t: float) -> tuple[float, float] | None:
        """Shape at time ``t`` seconds, or None where no phoneme covers it."""
        pts = self._points
        if not pts or t < pts[0][0] - 0.04 or t > pts[-1][1] + 0.04:
            return None
        centres = [(a + b) / 2 for a, b, _, _ in pts]
        i = int(np.searchsorted(centres, t))
        if i == 0:
            return pts[0][2], pts[0][3]
        if i >= len(pts):
            return pts[-1][2], pts[-1][3]
        a, b = pts[i - 1], pts[i]
        # Hold each shape over the middle half of its phoneme, blend across the boundary.
        hold_a = centres[i - 1] + (a[1] - a[0]) / 4
        hold_b = centres[i] - (b[1] - b[0]) / 4
        if t <= hold_a:
            return a[2], a[3]
        if t >= hold_b:
            return b[2], b[3]
        k = (t - hold_a) / max(hold_b - hold_a, 1e-6)
        return a[2] + k * (b[2] - a[2]), a[3] + k * (b[3] - a[3])


EMOTION_SMILE = {"neutral": 0.0, "happy": 0.8, "concerned": -0.5, "sad": -0.7, "surprised": 0.2}


class MouthAnalyzer:
    """Streaming speech → per-frame `MouthParams`, with `LOOKAHEAD_FRAMES` of look-ahead.

    Feed int16/float audio with `push`; `frames_ready` tells how many frames can be taken;
    `take` returns them. `finish` pads with silence so the tail can be taken.
    """

    def __init__(self) -> None:
        self.levels = LevelTracker()
        self.visemes = VisemeTrack()
        self.reset()

    def reset(self) -> None:
        self.levels.reset()
        self.visemes.reset()
        self._audio = np.zeros(WIN // 2, np.float32)  # leading half-window of silence
        self._audio_start = -(WIN // 2)  # absolute sample index of self._audio[0]
        self._received = 0  # absolute samples pushed
        self._hops_done = 0
        # Histories are trimmed as frames are taken; *_base is the index of their first entry.
        self._hop_base = 0
        self._hop_feats: list[np.ndarray] = []
        self._hop_loud: list[float] = []
        self._raw_base = 0
        self._raw: list[np.ndarray] = []  # per frame: (open, width, closed) before smoothing
        self._frames_out = 0
        self._smile: dict[int, float] = {}  # frame index -> smile, from emotion hints

    @property
    def received(self) -> int:
        return self._received

    def push(
        self, pcm: np.ndarray, phonemes: tuple[Phoneme, ...] = (), emotion: str | None = None
    ) -> None:
        start = self._received
        for p in phonemes:
            self.visemes.add(p, start)
        if emotion is not None:
            self._smile[start // FRAME_SAMPLES] = EMOTION_SMILE.get(emotion, 0.0)
        x = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        self._audio = np.concatenate([self._audio, x])
        self._received += len(x)
        self._analyse()

    def finish(self) -> None:
        """Pad silence so every pushed sample's frame (and its look-ahead) can be taken."""
        frames_needed = -(-self._received // FRAME_SAMPLES) + LOOKAHEAD_FRAMES
        target = frames_needed * FRAME_SAMPLES + WINDOW_OVERHANG
        pad = max(0, target - self._received)
        self._audio = np.concatenate([self._audio, np.zeros(pad, np.float32)])
        self._received += pad
        self._analyse()

    def _analyse(self) -> None:
        # A hop h is centred on sample h*HOP + HOP/2 and needs WIN/2 samples after it.
        available = self._audio_start + len(self._audio)
        n_hops = max(0, (available - WIN // 2 - HOP // 2) // HOP + 1)
        if n_hops <= self._hops_done:
            return
        idx = np.arange(self._hops_done, n_hops)
        starts = idx * HOP + HOP // 2 - WIN // 2 - self._audio_start
        windows = np.lib.stride_tricks.sliding_window_view(self._audio, WIN)[starts]
        feats = hop_features(windows)
        for row in feats:
            self._hop_feats.append(row)
            self._hop_loud.append(self.levels.update(float(row[0]), float(row[1])))
        self._hops_done = n_hops
        while self._raw_end() * HOPS_PER_FRAME + HOPS_PER_FRAME <= self._hop_base + len(
            self._hop_feats
        ):
            f = self._raw_end()
            start = f * HOPS_PER_FRAME - self._hop_base
            sl = slice(start, start + HOPS_PER_FRAME)
            params = audio_params(np.stack(self._hop_feats[sl]), np.array(self._hop_loud[sl]))
            t = (f + 0.5) * FRAME_SAMPLES / SAMPLE_RATE
            shape = self.visemes.sample(t)
            closed = 0.0
            if shape is not None:
                loud = float(np.mean(self._hop_loud[sl]))
                gate = float(_smoothstep(loud, 0.02, 0.25))
                params = np.array([0.5 * shape[0] * gate + 0.5 * params[0], shape[1] * gate])
                closed = float(shape[0] < 0.05)  # m, b, p: the lips meet, whatever the sound
            self._raw.append(np.array([params[0], params[1], closed]))
        done = self._raw_end() * HOPS_PER_FRAME - self._hop_base
        del self._hop_feats[:done], self._hop_loud[:done]
        self._hop_base += done
        # Drop audio no later hop needs.
        keep_from = self._hops_done * HOP + HOP // 2 - WIN // 2
        cut = keep_from - self._audio_start
        if cut > 4 * WIN:
            self._audio = self._audio[cut:]
            self._audio_start = keep_from

    def _raw_end(self) -> int:
        return self._raw_base + len(self._raw)

    def frames_ready(self) -> int:
        return max(0, self._raw_end() - LOOKAHEAD_FRAMES - self._frames_out)

    def take(self) -> MouthParams:
        """The next frame's smoothed mouth; call only when `frames_ready` > 0."""
        f = self._frames_out
        zero = np.zeros(3)
        rows = [self._raw[f + k - self._raw_base] if f + k >= 0 else zero for k in range(-2, 3)]
        o, w, _ = (SMOOTH[:, None] * np.stack(rows)).sum(axis=0)
        if rows[2][2]:  # a closure shuts the lips on its frame, smoothing or not
            o = 0.0
        started = [k for k in self._smile if k <= f]
        smile = 0.0
        if started:  # the latest emotion hint in force; older ones are done with
            latest = max(started)
            smile = self._smile[latest]
            for k in started:
                if k != latest:
                    del self._smile[k]
        self._frames_out += 1
        drop = f - 1 - self._raw_base  # keep the two frames before the next one
        if drop > 0:
            del self._raw[:drop]
            self._raw_base += drop
        self.visemes.forget_before(f * FRAME_SAMPLES / SAMPLE_RATE - 0.2)
        if o < 0.03:
            o = 0.0
        return MouthParams(
            open=float(np.clip(o, 0, 1)), width=float(np.clip(w, -1, 1)), smile=smile
        )
