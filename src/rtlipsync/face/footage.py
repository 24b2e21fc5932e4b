"""Talking footage → a bank of the person's own real mouths (the avatar's photoreal mouths).

When the video an avatar is prepared from shows the person talking, every usable frame's
lower face is a real mouth of that person: lips, teeth and tongue as they really look. This
module finds out whether the footage talks, aligns each frame's lower face to one reference
geometry (a similarity fitted on points that do not move with the mouth: eye corners and
nose), indexes the mouths by shape (opening, width, teeth showing) and head pose, keeps a
spread of them that covers the widest range, and learns how this person's mouth follows the
articulation layer's cues (`rtlipsync.articulation.CUES`) from the footage's own audio.

Serving (`rtlipsync.engines.cpu.footage`) then picks, for each frame the engine wants, the
real mouths nearest to what this person's mouth would do, meets the two nearest halfway
with optical flow and pastes the result through one feathered lower-face mask.

File: ``<avatar>/footage.npz``, written inside the avatar's temporary folder during
preparation, so it appears with the avatar or not at all. ``FOOTAGE_VERSION`` changes when
its layout or what goes into it does (2: same-person jump cuts are banked); an avatar with an
older bank is served with the drawn mouth until it is prepared again, which preparation then
does even from an unchanged source.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from rtlipsync.face.landmarks import face_scale, lip_gap
from rtlipsync.media.frames import FPS

log = logging.getLogger(__name__)

FOOTAGE_VERSION = 2
FILE = "footage.npz"
# Points that do not move when the mouth does: eye corners, nose bridge, nose tip and wings.
STABLE = np.array([33, 133, 362, 263, 168, 6, 197, 195, 4, 98, 327])
# The lower face outline, cheek to cheek through the chin (MediaPipe face oval).
JAW = np.array([132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361])
# The inner lip outline, corner to corner over the top and back under the bottom.
INNER_LIPS = np.array(
    [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
)
MOUTH_CORNERS = (61, 291)
NOSE_BOTTOM = 2

TALK_RANGE = 0.03  # p90 - p10 of the lip gap (face heights) above which the footage talks
MIN_TALK_FRAMES = 2 * FPS  # at least two seconds of usable face
MIN_USABLE_SHARE = 0.5  # of the frames: fewer usable faces than this and nothing is banked
MAX_MOUTHS = 600
# Stable-point misfit (in eye-corner distances) above which a frame is unusable: a similarity
# cannot follow a head turned far from the reference, and its mouth would land askew.
FIT_RESIDUAL = 0.08
# A cut: in one frame (40 ms) the face jumps by CUT_JUMP of its size, is resized by
# CUT_RESIZE (log ratio), changes shape by CUT_SHAPE or its aligned lower face changes colour
# by CUT_COLOUR (CIELAB); no head moves that fast. Within shots of the talking clips the
# largest steps were 0.22, 0.067, 0.037 and 4.9; the real jump cut in latentsync-demo3 moves
# the face by 0.31. A shot after a cut shows the first shot's person when
# its face's shape (landmark proportions) is within SAME_SHAPE of the first shot's and its
# aligned lower face has the same colour: CIELAB distance of the mask-weighted means within
# SAME_COLOUR. Shape alone cannot tell: a jump cut (the same person zoomed or reframed) moves
# the proportions as far as another face does. Measured on the talking clips with a real and
# synthetic jump cuts vs every ordered pair of different people (benchmarks/RESULTS.md): same
# person shape <= 0.041, colour <= 1.8; different people shape >= 0.018, colour >= 4.2 where
# the shapes are close. Where a shot has no aligned patch to measure, its shape must be within
# SAME_FACE. Other shots are not banked. A cut to someone else framed alike, with nearly the
# same proportions and colouring, is not seen.
CUT_JUMP = 0.3
CUT_RESIZE = 0.12
CUT_SHAPE = 0.03
CUT_COLOUR = 8.0
SAME_SHAPE = 0.045
SAME_COLOUR = 3.0
SAME_FACE = 0.02
JPEG_QUALITY = 93
FEATURES = ("opening", "width", "teeth", "yaw", "pitch")


@dataclass
class FootageReport:
    """What preparation found in the footage (kept in the avatar's manifest)."""

    talking: bool
    message: str
    mouths: int = 0
    opening_range: tuple[float, float] = (0.0, 0.0)
    fitted_seconds: float = 0.0  # seconds of the footage's audio the mapping learned from

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": FOOTAGE_VERSION,
            "talking": self.talking,
            "message": self.message,
            "mouths": self.mouths,
            "opening_range": [round(v, 4) for v in self.opening_range],
            "fitted_seconds": round(self.fitted_seconds, 1),
        }


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, shift) taking src to dst."""
    m, _ = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS
    )
    if m is None:
        raise ValueError("degenerate points")
    return m


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


def _shape(points: np.ndarray) -> np.ndarray:
    """The stable points, centred and scaled to unit eye distance: who the face is, roughly."""
    s = points[STABLE]
    return (s - s.mean(axis=0)) / max(face_scale(points), 1e-6)


def mouth_features(points: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """`FEATURES` of one face: lip gap (the realism measures' opening), mouth width over eye
    distance, share of bright pixels between the lips (teeth), and head yaw and pitch (nose
    offset from the eyes' midpoint, in eye distances)."""
    scale = max(face_scale(points), 1e-6)
    a, b = MOUTH_CORNERS
    width = float(np.linalg.norm(points[a] - points[b])) / scale
    yaw, pitch = head_pose(points)
    teeth = 0.0
    poly = points[INNER_LIPS].astype(np.int32)
    x, y, w, h = cv2.boundingRect(poly)
    if w > 2 and h > 2:
        patch = frame[max(y, 0) : y + h, max(x, 0) : x + w]
        if patch.size:
            inside = np.zeros(patch.shape[:2], np.uint8)
            cv2.fillPoly(inside, [poly - [max(x, 0), max(y, 0)]], 1)
            if inside.sum() > 0:
                hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
                bright = (hsv[..., 2] > 150) & (hsv[..., 1] < 90)
                teeth = float((bright & (inside > 0)).sum()) / float(inside.sum())
    return np.array([lip_gap(points), width, teeth, yaw, pitch], np.float32)


def head_pose(points: np.ndarray) -> np.ndarray:
    """(yaw, pitch) proxies: the nose tip's offset from the eyes' midpoint, in eye distances."""
    eyes = (points[33] + points[263]) / 2
    return ((points[4] - eyes) / max(face_scale(points), 1e-6)).astype(np.float32)


class FootageCollector:
    """Takes the avatar's frames one by one during preparation (with their landmarks) and
    keeps what a bank needs: each usable frame's aligned lower face and its features."""

    def __init__(self) -> None:
        self.reference: np.ndarray | None = None  # (478, 2) points of the reference face
        self.box: tuple[int, int, int, int] | None = None  # x, y, w, h in reference pixels
        self.mask: np.ndarray | None = None
        self.frames = 0
        self.other_face = 0  # frames of shots showing another face (set by `same_person`)
        self.patches: dict[int, bytes] = {}
        self.features: dict[int, np.ndarray] = {}
        self._shot_shapes: list[list[np.ndarray]] = []  # per shot, each face's shape
        self._shot_colours: list[list[np.ndarray]] = []  # per shot, each aligned face's colour
        self._shot_of: dict[int, int] = {}
        self._last: tuple[np.ndarray, float, np.ndarray, np.ndarray | None] | None = None

    def add(self, index: int, frame: np.ndarray, points: np.ndarray | None) -> None:
        self.frames += 1
        if points is None:
            return
        if self.reference is None:
            self._set_reference(points, frame.shape)
        assert self.reference is not None
        self._track(index, points, self._bank(index, frame, points))

    def _bank(self, index: int, frame: np.ndarray, points: np.ndarray) -> np.ndarray | None:
        """Keep the frame's aligned lower face and features; its mean colour, or None when
        the frame cannot be aligned."""
        assert self.reference is not None and self.box is not None
        try:
            to_ref = _similarity(points[STABLE], self.reference[STABLE])
        except ValueError:
            return None
        misfit = np.linalg.norm(_apply(to_ref, points[STABLE]) - self.reference[STABLE], axis=1)
        if misfit.mean() / face_scale(self.reference) > FIT_RESIDUAL:
            return None
        x, y, w, h = self.box
        shift = to_ref.copy()
        shift[:, 2] -= (x, y)
        patch = cv2.warpAffine(frame, shift, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        ok, jpeg = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        self.patches[index] = jpeg.tobytes()
        self.features[index] = mouth_features(points, frame)
        return self._mean_colour(patch)

    def _mean_colour(self, patch: np.ndarray) -> np.ndarray:
        """The lower face's mean colour (CIELAB, 0-100 lightness) under the blend mask."""
        assert self.mask is not None
        lab = cv2.cvtColor(patch.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
        weights = self.mask.astype(np.float32)
        return (lab * weights[..., None]).sum(axis=(0, 1)) / max(float(weights.sum()), 1e-6)

    def _track(self, index: int, points: np.ndarray, colour: np.ndarray | None) -> None:
        """Follow the face from frame to frame and start a new shot at a cut."""
        shape = _shape(points)
        centre = points[STABLE].mean(axis=0)
        scale = face_scale(points)
        cut = self._last is None
        if self._last is not None:
            c0, s0, sh0, col0 = self._last
            jump = float(np.linalg.norm(centre - c0)) / max(s0, 1e-6)
            resized = abs(np.log(max(scale, 1e-6) / max(s0, 1e-6)))
            recoloured = (
                float(np.linalg.norm(colour - col0))
                if colour is not None and col0 is not None
                else 0.0
            )
            cut = (
                jump > CUT_JUMP
                or resized > CUT_RESIZE
                or np.abs(shape - sh0).mean() > CUT_SHAPE
                or recoloured > CUT_COLOUR
            )
        if cut:
            self._shot_shapes.append([])
            self._shot_colours.append([])
        self._last = (centre, scale, shape, colour)
        self._shot_shapes[-1].append(shape)
        if colour is not None:
            self._shot_colours[-1].append(colour)
        self._shot_of[index] = len(self._shot_shapes) - 1

    def same_person(self) -> set[int]:
        """Frames of the shots that show the first shot's face (every shot, without cuts)."""
        if not self._shot_shapes:
            return set()
        medians = [np.median(np.stack(s), axis=0) for s in self._shot_shapes]
        colour = {k: np.median(np.stack(c), axis=0) for k, c in enumerate(self._shot_colours) if c}

        def same(k: int) -> bool:
            shape = float(np.abs(medians[k] - medians[0]).mean())
            if k not in colour or 0 not in colour:
                return shape <= SAME_FACE
            dist = float(np.linalg.norm(colour[k] - colour[0]))
            return shape <= SAME_SHAPE and dist <= SAME_COLOUR

        good = {k for k in range(len(medians)) if same(k)}
        frames = {i for i, k in self._shot_of.items() if k in good}
        self.other_face = sum(1 for k in self._shot_of.values() if k not in good)
        return frames

    def shot_of(self, index: int, default: int = -1) -> int:
        """The shot (0 the first, counting cuts) that frame ``index`` belongs to."""
        return self._shot_of.get(index, default)

    def _set_reference(self, points: np.ndarray, shape: tuple[int, ...]) -> None:
        self.reference = points.copy()
        self.box, self.mask = lower_face_region(points, shape)


def lower_face_region(
    points: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The box (x, y, w, h) that a banked mouth covers in reference pixels, and its feathered
    mask (h, w) uint8: from just under the nose down past the chin (room for the jaw to
    drop), inside the cheeks, with soft edges so no seam shows."""
    scale = face_scale(points)
    jaw = points[JAW].astype(np.float64)
    top = float(points[NOSE_BOTTOM, 1]) + 0.08 * scale
    centre_x = float(points[[61, 291], 0].mean())
    # The outline pulled in from the cheek edge and pushed down for an open jaw.
    outline = jaw.copy()
    outline[:, 0] = centre_x + 0.75 * (outline[:, 0] - centre_x)
    low = np.clip((outline[:, 1] - top) / max(points[152, 1] - top, 1.0), 0.0, 1.0)
    outline[:, 1] += 0.28 * scale * low
    outline[:, 1] = np.maximum(outline[:, 1], top)
    poly = np.concatenate([[[outline[0, 0], top]], outline, [[outline[-1, 0], top]]])
    feather = max(2.0, 0.09 * scale)
    x0 = int(np.floor(poly[:, 0].min() - 3 * feather))
    x1 = int(np.ceil(poly[:, 0].max() + 3 * feather))
    y0 = int(np.floor(top - 3 * feather))
    y1 = int(np.ceil(poly[:, 1].max() + 3 * feather))
    h_img, w_img = shape[:2]
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, w_img), min(y1, h_img)
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(mask, [np.round(poly - (x0, y0)).astype(np.int32)], 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return (x0, y0, x1 - x0, y1 - y0), np.round(mask * 255).astype(np.uint8)


def talks(openings: np.ndarray) -> bool:
    """Whether the mouth in the footage moves like speech, not a still or a slightly parted
    idle mouth: the lip gap's 10-90 % spread is at least `TALK_RANGE` face heights."""
    if len(openings) < MIN_TALK_FRAMES:
        return False
    p10, p90 = np.percentile(openings, [10, 90])
    return bool(p90 - p10 >= TALK_RANGE)


def spread(features: np.ndarray, limit: int = MAX_MOUTHS) -> np.ndarray:
    """Indices of at most ``limit`` rows that cover the widest range of mouth shapes: rows are
    binned by opening and width, and each bin keeps up to the same number (rare shapes all
    stay, common ones are thinned evenly through time)."""
    n = len(features)
    if n <= limit:
        return np.arange(n)
    o, w = features[:, 0], features[:, 1]
    ob = np.digitize(o, np.quantile(o, np.linspace(0, 1, 13)[1:-1]))
    edges_w = np.linspace(w.min(), w.max() + 1e-6, 6)[1:-1]
    wb = np.digitize(w, edges_w)
    bins: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(ob.tolist(), wb.tolist(), strict=True)):
        bins.setdefault(key, []).append(i)
    cap = limit
    while sum(min(len(v), cap) for v in bins.values()) > limit:
        cap -= 1
    keep: list[int] = []
    for members in bins.values():
        if len(members) <= cap:
            keep.extend(members)
        else:
            picks = np.linspace(0, len(members) - 1, cap).round().astype(int)
            keep.extend(members[p] for p in picks)
    return np.array(sorted(keep))


@dataclass
class MouthMapping:
    """How this person's mouth follows the articulation cues: a ridge regression from
    `MouthParams.cues` to (opening, width), learned on the footage's own audio and mouths,
    then the predicted opening mapped onto the footage's real distribution (so the person's
    share of closed and wide-open frames is kept). Without audio it falls back to placing the
    engine's own opening on that distribution."""

    weights: np.ndarray | None  # (len(CUES) + 1, 2), or None: no audio to learn from
    predicted: np.ndarray  # quantiles of the fitted opening on the footage
    real: np.ndarray  # the same quantiles of the real opening
    widths: np.ndarray  # (2,): real width's mean and spread

    RIDGE = 0.01  # per frame of training data
    # A least-squares fit blurs quick closures into half-closed mouths (it predicts the
    # average of what may follow). Raising the predicted opening (relative to the person's
    # p90) to this power gives the near-closures back and leaves wide openings as they are.
    CONTRAST = 1.6

    def target(self, open_: float, width: float, cues: np.ndarray | None) -> tuple[float, float]:
        """(opening, width) this person's mouth would show."""
        if self.weights is not None and cues is not None:
            x = np.append(cues, 1.0)
            pred = x @ self.weights
            return self._contrast(float(np.interp(pred[0], self.predicted, self.real))), float(
                pred[1]
            )
        opening = float(np.interp(open_, self.predicted, self.real))
        return self._contrast(opening), float(self.widths[0] + self.widths[1] * width)

    def _contrast(self, opening: float) -> float:
        wide = float(self.real[90])  # the person's p90 opening
        if wide <= 0:
            return opening
        return wide * (max(opening, 0.0) / wide) ** self.CONTRAST

    @classmethod
    def fit(cls, cues: np.ndarray | None, mouths: np.ndarray) -> MouthMapping:
        """``cues`` (N, C) per frame from the footage's audio (None: no audio), ``mouths``
        (N, 2) the real opening and width of the same frames."""
        q = np.linspace(0, 1, 101)
        real = np.quantile(mouths[:, 0], q)
        widths = np.array([mouths[:, 1].mean(), mouths[:, 1].std() + 1e-6])
        if cues is None:
            return cls(None, np.linspace(0.0, 1.0, 101), real, widths)
        x = np.concatenate([cues, np.ones((len(cues), 1))], axis=1)
        ridge = cls.RIDGE * len(x) * np.eye(x.shape[1])
        weights = np.linalg.solve(x.T @ x + ridge, x.T @ mouths)
        fitted = x @ weights[:, 0]
        predicted = np.quantile(fitted, q)
        predicted = np.maximum.accumulate(predicted + np.arange(101) * 1e-9)  # increasing
        return cls(weights, predicted, real, widths)


def footage_cues(audio: np.ndarray) -> np.ndarray:
    """(frames, len(CUES)) articulation cues of 16 kHz speech, one row per 40 ms frame."""
    from rtlipsync.articulation import Articulator
    from rtlipsync.media.audio import to_int16

    pcm = to_int16(audio)
    rows = [p.cues for p in Articulator().whole(pcm)]
    return np.array(rows[: len(pcm) // (16000 // FPS)], np.float32)


def build(
    collector: FootageCollector, audio: np.ndarray | None, landmarks: np.ndarray, out: Path
) -> FootageReport:
    """Decide whether the footage talks and, if it does, write its bank to ``out``.

    ``audio`` is the footage's 16 kHz sound (None when it has none); ``landmarks`` the
    avatar's (N, 478, 2) points, from which each avatar frame's placement of the reference
    mouth region is taken (smoothed over time so the pasted mouth does not shimmer).
    """
    if collector.frames == 0 or collector.reference is None:
        return FootageReport(False, "no face: the synthesized mouth is used")
    person = collector.same_person()
    indices = np.array(sorted(i for i in collector.features if i in person), np.int64)
    usable = len(indices)
    openings = np.array([collector.features[int(i)][0] for i in indices], np.float32)
    if not talks(openings) and not collector.other_face:
        return FootageReport(False, "footage does not talk: the synthesized mouth is used")
    if usable < MIN_USABLE_SHARE * collector.frames:
        why = (
            f"another face or shot in {collector.other_face} frames"
            if collector.other_face
            else "the face is missing, turned or blurred in most frames"
        )
        return FootageReport(
            False,
            f"talking footage not banked: only {usable} of {collector.frames} frames show "
            f"the same face clearly ({why}); use footage of one person facing the camera. "
            "The synthesized mouth is used",
        )
    features = np.stack([collector.features[int(i)] for i in indices])
    mouths = features[:, :2].astype(np.float64)
    cues = None
    fitted_seconds = 0.0
    if audio is not None:
        all_cues = footage_cues(audio)
        have = indices < len(all_cues)
        if have.sum() >= MIN_TALK_FRAMES:
            cues = all_cues[indices[have]].astype(np.float64)
            mouths = mouths[have]
            fitted_seconds = float(have.sum()) / FPS
    mapping = MouthMapping.fit(cues, mouths)
    keep = spread(features)
    kept = indices[keep]
    blobs = [collector.patches[int(i)] for i in kept]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    placements, poses = _placements(collector, landmarks, person)
    lo, hi = float(features[keep, 0].min()), float(features[keep, 0].max())
    report = FootageReport(
        True,
        f"talking footage: {len(kept)} mouths banked, opening range {lo:.2f}-{hi:.2f}",
        mouths=len(kept),
        opening_range=(lo, hi),
        fitted_seconds=fitted_seconds,
    )
    assert collector.box is not None and collector.mask is not None
    np.savez(
        out / FILE,
        version=np.array(FOOTAGE_VERSION),
        box=np.array(collector.box, np.int32),
        mask=collector.mask,
        frames=kept.astype(np.int32),
        features=features[keep],
        offsets=offsets,
        data=np.frombuffer(b"".join(blobs), np.uint8),
        placements=placements,
        poses=poses,
        weights=mapping.weights if mapping.weights is not None else np.zeros((0, 2)),
        predicted=mapping.predicted,
        real=mapping.real,
        widths=mapping.widths,
        info=np.array(json.dumps(report.as_dict())),
    )
    return report


def _placements(
    collector: FootageCollector, landmarks: np.ndarray, person: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per avatar frame: (N, 2, 3) reference pixels → that frame's pixels, and (N, 2) head
    pose; NaN where the frame has no face of the reference person. Stable points are
    smoothed over time first, so the pasted mouth does not shimmer."""
    assert collector.reference is not None
    n = len(landmarks)
    stable = landmarks[:, STABLE].astype(np.float64)
    valid = ~np.isnan(stable[:, 0, 0])
    out = np.full((n, 2, 3), np.nan, np.float32)
    poses = np.full((n, 2), np.nan, np.float32)
    if valid.sum() == 0:
        return out, poses
    # Smoothed within each shot, never across a cut (that would smear the mouth between two
    # framings); frames without a face take the shot of the face before them.
    shot = np.full(n, -1, np.int64)
    last = -1
    for i in range(n):
        last = collector.shot_of(i, last) if valid[i] else last
        shot[i] = last
    smooth = np.empty_like(stable)
    for k in np.unique(shot):
        part = np.flatnonzero(shot == k)
        good = valid[part]
        if not good.any():
            smooth[part] = np.nan
            continue
        filled = stable[part].copy()
        for p in range(stable.shape[1]):
            for c in range(2):
                filled[:, p, c] = np.interp(part, part[good], stable[part[good], p, c])
        smooth[part] = gaussian_filter1d(filled, sigma=1.0, axis=0, mode="nearest")
    for i in np.flatnonzero(valid):
        if int(i) not in person:
            continue
        try:
            out[i] = _similarity(collector.reference[STABLE], smooth[i])
        except ValueError:
            continue
        poses[i] = head_pose(landmarks[i])
    return out, poses
