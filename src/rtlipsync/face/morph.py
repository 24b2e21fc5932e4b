"""Meeting two images of a mouth part of the way with optical flow (lips move, not fade).

Both banks (baked MuseTalk mouths and a person's real mouths) show a mouth between two
stored ones this way. The flow solver keeps scratch state, so each thread gets its own:
sessions make their frames on worker threads, and one shared solver corrupted memory.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

_local = threading.local()


def _solver() -> cv2.DISOpticalFlow:
    solver = getattr(_local, "solver", None)
    if solver is None:
        solver = _local.solver = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    return solver


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = getattr(_local, "grids", {})
    _local.grids = grids
    if (h, w) not in grids:
        grids[(h, w)] = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return grids[(h, w)]


def meet(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Image ``a`` moved a share ``t`` (0..1) of the way to ``b`` (same size, BGR).

    Each image moves part of the way toward the other along the flow between them, then the
    two are mixed; a's pixel at x goes to x + t * flow_ab(x), sampled backwards as an
    approximation.
    """
    if t < 0.05 or a is b:
        return a
    solver = _solver()
    ga, gb = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(b, cv2.COLOR_BGR2GRAY)
    flow_ab = solver.calc(ga, gb, None)
    flow_ba = solver.calc(gb, ga, None)
    gx, gy = _grid(*a.shape[:2])
    wa = cv2.remap(a, gx - t * flow_ab[..., 0], gy - t * flow_ab[..., 1], cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    wb = cv2.remap(b, gx - (1 - t) * flow_ba[..., 0], gy - (1 - t) * flow_ba[..., 1],
                   cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return cv2.addWeighted(wa, 1 - t, wb, t, 0)
