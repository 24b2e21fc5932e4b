"""Crop boxes and blend masks by MuseTalk's rules, computed from 68-point landmarks.

The CPU engine does not need them, but every avatar carries them so the MuseTalk engine (and
anything else that works on a face crop) can use an avatar prepared once.
"""

from __future__ import annotations

import cv2
import numpy as np

from rtlipsync.face.landmarks import FACE_OVAL

MASK_SIZE = 256  # blend masks are stored at this size, stretched over their blend box
CROP = 256  # MuseTalk's face crops are this size


def crop_box(
    lm68: np.ndarray, height: int, width: int, bbox_shift: int = 0, extra_margin: int = 10
) -> tuple[int, int, int, int]:
    """MuseTalk's face crop ``(x1, y1, x2, y2)``.

    The crop's vertical midpoint sits on landmark 29 (moved by ``bbox_shift``, v1.0's knob) and
    its bottom on the chin; v1.5 extends the bottom by ``extra_margin`` after the top is fixed,
    as its training crops did.
    """
    pts = np.asarray(lm68).astype(np.int32)
    y29 = int(pts[29, 1]) + bbox_shift
    y2 = int(pts[:, 1].max())
    y1 = max(0, 2 * y29 - y2)
    x1 = max(0, int(pts[:, 0].min()))
    x2 = min(width, int(pts[:, 0].max()))
    y2 = min(y2 + extra_margin, height)
    if y2 - y1 < 8 or x2 - x1 < 8:
        raise ValueError(f"degenerate face crop {(x1, y1, x2, y2)}")
    return x1, y1, x2, y2


def bbox_shift_range(lm68_frames: list[np.ndarray]) -> tuple[int, int]:
    """The ``bbox_shift`` range that keeps the crop midline on the nose (MuseTalk prints it)."""
    if not lm68_frames:
        return 0, 0
    stack = np.stack(lm68_frames)
    down = float(np.mean(stack[:, 30, 1] - stack[:, 29, 1]))
    up = float(np.mean(stack[:, 29, 1] - stack[:, 28, 1]))
    return -round(down), round(up)


def blend_box(box: tuple[int, int, int, int], expand: float = 1.5) -> tuple[int, int, int, int]:
    """The square around a crop box that a blend mask covers (may extend outside the frame)."""
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, xc + s, yc + s


def lower_face_mask(points: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A feathered mask of the lower face, ``MASK_SIZE`` square over `blend_box` of ``box``.

    This is the landmark-polygon stand-in for MuseTalk's face-parsing mask: the face oval,
    limited to the crop box and to the half below the box's centre line, then blurred so the
    pasted face has no edge.
    """
    bx1, by1, bx2, by2 = blend_box(box)
    side = bx2 - bx1
    mask = np.zeros((side, side), np.uint8)
    oval = np.round(points[FACE_OVAL] - (bx1, by1)).astype(np.int32)
    cv2.fillPoly(mask, [oval], 255, lineType=cv2.LINE_AA)
    return finish_blend_mask(mask, box, (bx1, by1, bx2, by2))


NO_BOX = (-1, -1, -1, -1)  # a frame without a face


def landmark_blend_mask(
    points: np.ndarray, box: tuple[int, int, int, int] | None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One frame's landmark blend mask and its blend box; empty (and `NO_BOX`) where the
    frame has no face (``box`` None or negative)."""
    if box is None or box[0] < 0:
        return np.zeros((MASK_SIZE, MASK_SIZE), np.uint8), NO_BOX
    return lower_face_mask(points, box), blend_box(box)


def finish_blend_mask(
    raw: np.ndarray, box: tuple[int, int, int, int], mask_box: tuple[int, int, int, int]
) -> np.ndarray:
    """`feather_blend_mask`, stored ``MASK_SIZE`` square (the landmark masks every avatar
    keeps; MuseTalk's parsed masks stay at full size)."""
    mask = feather_blend_mask(raw, box, mask_box)
    return cv2.resize(mask, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)


def feather_blend_mask(
    raw: np.ndarray, box: tuple[int, int, int, int], mask_box: tuple[int, int, int, int]
) -> np.ndarray:
    """MuseTalk's last steps for any blend mask (0/255 over the blend box): keep it inside the
    crop box and below the box's centre line, and feather it (a Gaussian 10 % of the box)."""
    bx1, by1, bx2, _ = mask_box
    side = bx2 - bx1
    x1, y1, x2, y2 = box
    keep = np.zeros_like(raw)
    keep[max(0, y1 - by1) : max(0, y2 - by1), max(0, x1 - bx1) : max(0, x2 - bx1)] = 1
    mask = raw * keep
    mask[: side // 2] = 0
    k = int((0.1 * side) // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (k, k), 0)


def crop_face(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face crop MuseTalk works on: the box, stretched to 256 x 256 (Lanczos)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(frame[y1:y2, x1:x2], (CROP, CROP), interpolation=cv2.INTER_LANCZOS4)


Region = tuple[slice, slice]


def paste_region(shape: tuple[int, ...], mask_box: tuple[int, int, int, int]) -> Region | None:
    """The part of a frame of ``shape`` that a paste through ``mask_box`` touches: the blend
    box clipped to the frame (None when it lies wholly outside). Only this part changes."""
    bx1, by1, bx2, by2 = (int(v) for v in mask_box)
    h, w = shape[:2]
    cx1, cy1, cx2, cy2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
    if cx1 >= cx2 or cy1 >= cy2:
        return None
    return slice(cy1, cy2), slice(cx1, cx2)


def paste_mask(mask: np.ndarray, mask_box: tuple[int, int, int, int], region: Region) -> np.ndarray:
    """(h, w, 1) uint8 weights (255 = all face) of the generated face over ``region``: the
    stored mask stretched over its blend box, then clipped like the region."""
    bx1, by1, bx2, by2 = (int(v) for v in mask_box)
    weight = cv2.resize(mask, (bx2 - bx1, by2 - by1))
    ys, xs = region
    return np.ascontiguousarray(
        weight[ys.start - by1 : ys.stop - by1, xs.start - bx1 : xs.stop - bx1, None]
    )


def face_placement(box: tuple[int, int, int, int], region: Region) -> tuple[Region, Region] | None:
    """Where the face, resized to ``box``, lands in ``region`` (first) and which part of it
    lands there (second); None when the box misses the region."""
    x1, y1, x2, y2 = (int(v) for v in box)
    ys, xs = region
    fx1, fy1 = max(x1, xs.start), max(y1, ys.start)
    fx2, fy2 = min(x2, xs.stop), min(y2, ys.stop)
    if fx1 >= fx2 or fy1 >= fy2:
        return None
    into = slice(fy1 - ys.start, fy2 - ys.start), slice(fx1 - xs.start, fx2 - xs.start)
    part = slice(fy1 - y1, fy2 - y1), slice(fx1 - x1, fx2 - x1)
    return into, part


def paste(
    frame: np.ndarray,
    face: np.ndarray,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    mask_box: tuple[int, int, int, int],
) -> np.ndarray:
    """``frame`` with the generated 256² ``face`` resized into ``box`` and blended through
    ``mask`` (stretched over ``mask_box``, which may reach outside the frame: clipped)."""
    out = frame.copy()
    region = paste_region(frame.shape, mask_box)
    if region is None:
        return out
    # Only the blend box's part of the frame is touched (this runs for every spoken frame).
    original = frame[region].astype(np.float32)
    large = original.copy()  # the frame with the face in its box, within the region
    placement = face_placement(box, region)
    if placement is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
        into, part = placement
        large[into] = cv2.resize(face, (x2 - x1, y2 - y1)).astype(np.float32)[part]
    m = paste_mask(mask, mask_box, region).astype(np.float32) / 255.0
    out[region] = np.round(m * large + (1 - m) * original).astype(np.uint8)
    return out
