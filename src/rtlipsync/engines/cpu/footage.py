"""Serving a footage bank: the person's own real mouths, chosen by articulation, on the CPU.

For each frame the articulation layer's `MouthParams` (and its cues) go through the avatar's
learned `MouthMapping` to the opening and width this person's mouth would show; the two
banked mouths nearest to that (and to the frame's head pose) are met halfway with optical
flow, so lips move rather than cross-fade; the result is placed on the avatar frame by the
similarity that carries the reference face onto it, colour-matched at the mask's rim and
blended through the feathered lower-face mask. Idle frames show the person's resting
closed mouth, so the idle loop of a talking video keeps its mouth shut.

The choice follows the footage: the frame that came after the mouth just shown counts as
nearer, so consecutive frames are the person's own motion where the speech allows (r against
the truth rose from 0.47 to 0.50 with it, and frame-to-frame change fell). It also keeps the
previous pair of mouths while each is nearly as good as the best, and eases the blend between
them, so a held vowel holds its teeth instead of flickering between equally good frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtlipsync.articulation import CUES, MouthParams
from rtlipsync.engines.cpu.engine import CpuStream
from rtlipsync.face.avatar import Avatar
from rtlipsync.face.footage import FILE, FOOTAGE_VERSION, MouthMapping
from rtlipsync.face.landmarks import FACE_OVAL, face_scale
from rtlipsync.face.morph import meet

# Weights of the selection distance, in units of the bank's own spread of each feature.
W_OPENING, W_WIDTH, W_POSE = 1.0, 0.35, 1.5
# Keep the previous pair of mouths while each is within this of the best choice (in the
# distance's units, where one unit is a spread of the person's openings), so a held vowel
# holds its teeth instead of flickering between near-equal frames.
STICK = 0.5
# A head-pose difference this small (nose offset in eye distances, about 2 degrees) counts
# as one spread at most: footage whose head barely moves would otherwise make a tiny pose
# change outweigh the mouth's shape, and the choice would jump with every frame's pose.
POSE_SPREAD_FLOOR = 0.03
T_SMOOTH = 0.5  # share of the previous frame's blend kept while the pair holds
FOLLOW = 1.0  # how much nearer the footage's next frame counts, after the mouth just shown
CLOSED_QUANTILE = 0.03  # a shut mouth's opening: this low quantile of the person's openings
# A bilabial heard in the audio shuts the lips when this person's mapping already has the
# mouth below this share of its wide (p90) opening: the acoustic evidence for a closure is
# trusted where the rest of the cues agree, not over an open vowel it may have misheard.
BILABIAL_BELOW = 1.0
# Memory bounds per avatar (shared by its sessions): decoded mouths kept, and per-frame
# landings kept (the rest are made again, about a millisecond each).
DECODED = 256
LANDINGS_KEPT = 256
_BILABIAL = CUES.index("bilabial")


class FootageBank:
    """A loaded footage bank (see `rtlipsync.face.footage`)."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.box = tuple(int(v) for v in data["box"])
            self.mask = data["mask"].astype(np.float32) / 255.0
            self.source_frames = data["frames"]
            self.features = data["features"].astype(np.float64)
            self._offsets = data["offsets"]
            self._data = data["data"]
            self.placements = data["placements"]
            self.poses = data["poses"].astype(np.float64)
            weights = data["weights"]
            self.mapping = MouthMapping(
                weights if len(weights) else None, data["predicted"], data["real"], data["widths"]
            )
        self._scale = self.features.std(axis=0) + 1e-6
        self._scale[3:5] = np.maximum(self._scale[3:5], POSE_SPREAD_FLOOR)
        self._cache: dict[int, np.ndarray] = {}
        self._landings: dict[int, _Landing] = {}
        self.closed = float(np.quantile(self.features[:, 0], CLOSED_QUANTILE))
        # The resting mouth: closed, at the person's usual width and a middling pose.
        rest_cost = (
            np.abs(self.features[:, 0] - self.closed) / self._scale[0]
            + np.abs(self.features[:, 1] - np.median(self.features[:, 1])) / self._scale[1]
            + np.abs(self.features[:, 3:] - np.median(self.features[:, 3:], axis=0)).sum(1)
        )
        self.rest = int(np.argmin(rest_cost))
        # Each banked mouth's successor in the footage (the next frame, if banked), so a
        # choice can follow the person's own motion from one frame to the next.
        where = {int(f): k for k, f in enumerate(self.source_frames)}
        self.successor = np.array([where.get(int(f) + 1, -1) for f in self.source_frames])

    def __len__(self) -> int:
        return len(self.features)

    def patch(self, k: int) -> np.ndarray:
        """Banked mouth ``k``, decoded (the most recently used `DECODED` are kept)."""
        face = self._cache.pop(k, None)
        if face is None:
            blob = self._data[self._offsets[k] : self._offsets[k + 1]]
            face = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        self._cache[k] = face  # most recent last
        while len(self._cache) > DECODED:
            del self._cache[next(iter(self._cache))]
        return face

    def distances(self, opening: float, width: float, pose: np.ndarray | None) -> np.ndarray:
        f, s = self.features, self._scale
        d = (
            W_OPENING * ((f[:, 0] - opening) / s[0]) ** 2
            + W_WIDTH * ((f[:, 1] - width) / s[1]) ** 2
        )
        if pose is not None:
            d += W_POSE * (((f[:, 3:5] - pose) / s[3:5]) ** 2).sum(axis=1)
        return d

    def blend(self, a: int, b: int, t: float) -> np.ndarray:
        """Mouth ``a`` moved a share ``t`` of the way to ``b`` (optical flow both ways)."""
        if a == b:
            return self.patch(a)
        return meet(self.patch(a), self.patch(b), t)

    def pose_of(self, frame: int) -> np.ndarray | None:
        """Yaw and pitch of avatar frame ``frame`` (None: no face there)."""
        if frame >= len(self.poses) or np.isnan(self.poses[frame, 0]):
            return None
        return self.poses[frame]

    def _landing(
        self, frame: int, shape: tuple[int, ...], points: np.ndarray | None
    ) -> _Landing | None:
        """Where a banked mouth lands on avatar frame ``frame`` and with what weights (made
        once per frame and kept: it depends on the frame only, not on the mouth shown)."""
        landing = self._landings.get(frame)
        if landing is not None:
            return landing
        m = self.placements[frame] if frame < len(self.placements) else None
        if m is None or np.isnan(m[0, 0]):
            return None
        x, y, w, h = self.box
        to_frame = m.astype(np.float64).copy()
        to_frame[:, 2] += to_frame[:, :2] @ np.array([x, y], np.float64)  # patch pixels → frame
        corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
        placed = corners @ to_frame[:, :2].T + to_frame[:, 2]
        ih, iw = shape[:2]
        x0 = max(int(np.floor(placed[:, 0].min())), 0)
        y0 = max(int(np.floor(placed[:, 1].min())), 0)
        x1 = min(int(np.ceil(placed[:, 0].max())), iw)
        y1 = min(int(np.ceil(placed[:, 1].max())), ih)
        if x0 >= x1 or y0 >= y1:
            return None
        local = to_frame
        local[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        alpha = cv2.warpAffine(self.mask, local, size, flags=cv2.INTER_LINEAR)
        if points is not None and not np.isnan(points[0, 0]):
            inside = np.round(_inside_face(points, x0, y0, size) * 255).astype(np.uint8)
            alpha = alpha * (inside.astype(np.float32) / 255.0)
        landing = _Landing(x0, y0, x1, y1, local, alpha[..., None], (alpha > 0.05) & (alpha < 0.6))
        if len(self._landings) < LANDINGS_KEPT:
            self._landings[frame] = landing
        return landing

    def paste(
        self, image: np.ndarray, frame: int, mouth: np.ndarray, points: np.ndarray | None = None
    ) -> np.ndarray:
        """``image`` (avatar frame ``frame``, whose landmarks are ``points``) with ``mouth`` (a
        reference-space patch) placed and blended in; unchanged when the frame has no face
        of the reference person."""
        out = image.copy()
        p = self._landing(frame, image.shape, points)
        if p is None:
            return out
        warped = cv2.warpAffine(mouth, p.local, (p.x1 - p.x0, p.y1 - p.y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE).astype(np.float32)  # fmt: skip
        region = image[p.y0 : p.y1, p.x0 : p.x1].astype(np.float32)
        # Match the patch's colour to the frame's where the mask fades out (lighting drifts
        # over a video, and the patch came from another moment of it).
        if p.rim.sum() > 20:
            warped += region[p.rim].mean(axis=0) - warped[p.rim].mean(axis=0)
        a = p.alpha
        out[p.y0 : p.y1, p.x0 : p.x1] = np.clip(a * warped + (1 - a) * region, 0, 255).astype(
            np.uint8
        )
        return out


@dataclass
class _Landing:
    """A banked mouth's place on one avatar frame: its box there, the affine from patch
    pixels into that box, the blend weights (h, w, 1), and the rim where colour is matched."""

    x0: int
    y0: int
    x1: int
    y1: int
    local: np.ndarray
    alpha: np.ndarray
    rim: np.ndarray


def _inside_face(points: np.ndarray, x0: int, y0: int, size: tuple[int, int]) -> np.ndarray:
    """(h, w) weights over the box at (x0, y0) of ``size``: 1 inside the frame's own face
    outline (extended downward by the room a dropping jaw needs), falling to 0 just inside
    its edge. A head turned away from the reference narrows the face on one side; without
    this the patch would cover hair or background there."""
    scale = face_scale(points)
    oval = points[FACE_OVAL].astype(np.float64) - (x0, y0)
    limit = np.zeros((size[1], size[0]), np.float32)
    for drop in np.linspace(0.0, 0.3 * scale, 4):
        cv2.fillPoly(limit, [np.round(oval + (0, drop)).astype(np.int32)], 1.0)
    margin = max(1, int(round(0.06 * scale)))
    limit = cv2.erode(limit, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return cv2.GaussianBlur(limit, (0, 0), max(1.0, 0.04 * scale))


def footage_path(avatar: Avatar) -> Path:
    return avatar.path / FILE


def load_footage(avatar: Avatar) -> FootageBank | None:
    """The avatar's footage bank, if it has a current one (cached on the avatar)."""
    cached: Any = avatar.extras.get("footage")
    if cached is not None:
        return cached
    path = footage_path(avatar)
    if not path.exists():
        return None
    with np.load(path) as data:
        if int(data["version"]) != FOOTAGE_VERSION:
            return None  # an older layout: served with the drawn mouth until prepared again
    bank = avatar.extras["footage"] = FootageBank(path)
    return bank


class FootageStream(CpuStream):
    """The articulation layer's mouths, shown with the person's own banked mouths."""

    def __init__(self, avatar: Avatar, bank: FootageBank) -> None:
        super().__init__(avatar)
        self.bank = bank
        self._pair: tuple[int, int] | None = None
        self._t = 0.0

    def reset(self) -> None:
        super().reset()
        self._pair = None
        self._t = 0.0

    def _choose(self, params: MouthParams, source: int, speaking: bool) -> tuple[int, int, float]:
        bank = self.bank
        if not speaking:
            # Idle: the resting mouth; straight after speech, a last step toward it from the
            # mouth shown (the drawn engine closes over two frames the same way).
            last = self._pair
            self._pair = None
            if last is not None and params.open > 0.0:
                return bank.rest, last[0], 0.35
            return bank.rest, bank.rest, 0.0
        cues = params.cues
        opening, width = bank.mapping.target(params.open, params.width, cues)
        wide = float(bank.mapping.real[90])
        closing = cues is not None and cues[_BILABIAL] > 0.5 and opening < BILABIAL_BELOW * wide
        if closing:
            opening = bank.closed  # a bilabial: the lips meet, wherever the footage was going
        d = bank.distances(opening, width, bank.pose_of(source))
        if self._pair is not None and FOLLOW > 0 and not closing:
            nxt = int(bank.successor[self._pair[0]])
            if nxt >= 0:  # (``d`` is this frame's own array)
                d[nxt] = max(d[nxt] - FOLLOW, 0.0)
        order = np.argsort(d)
        a, b = int(order[0]), int(order[1])
        held = self._pair
        if held is not None and not closing:
            # Each of the pair shown holds while it is nearly as good as the best.
            if d[held[0]] <= d[a] + STICK:
                a, b = held[0], (b if b != held[0] else a)
            if held[1] != a and d[held[1]] <= d[b] + STICK:
                b = held[1]
        da, db = float(np.sqrt(d[a])), float(np.sqrt(d[b]))
        t = da / (da + db) if da + db > 1e-9 else 0.0
        if held == (a, b):
            t = T_SMOOTH * self._t + (1.0 - T_SMOOTH) * t
        self._pair, self._t = (a, b), t
        return a, b, t

    def _image(self, source: int, params: MouthParams, speaking: bool) -> np.ndarray:
        base = self.avatar.frames[source]
        a, b, t = self._choose(params, source, speaking)
        mouth = self.bank.blend(a, b, t)
        return self.bank.paste(base, source, mouth, self.avatar.landmarks[source])
