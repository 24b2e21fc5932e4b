"""Face landmarks from MediaPipe face mesh, behind one small interface.

MediaPipe 0.10.21 ships its face models inside the wheel, so this runs offline with no
download and no mmpose/mmcv. Points are returned in pixels as a (478, 2) float32 array; other
backends only need to return the same layout (`LANDMARK_COUNT` points, MediaPipe indexing).
"""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

LANDMARK_COUNT = 478

# MediaPipe index for each point of the 68-point (iBUG/dlib) layout that MuseTalk's crop
# rules are written for. Jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67.
MP_TO_68 = np.array(
    [
        127,
        234,
        93,
        132,
        58,
        136,
        150,
        176,
        152,
        400,
        379,
        365,
        288,
        361,
        323,
        454,
        356,
        70,
        63,
        105,
        66,
        107,
        336,
        296,
        334,
        293,
        300,
        168,
        197,
        5,
        4,
        75,
        97,
        2,
        326,
        305,
        33,
        160,
        158,
        133,
        153,
        144,
        362,
        385,
        387,
        263,
        373,
        380,
        61,
        39,
        37,
        0,
        267,
        269,
        291,
        405,
        314,
        17,
        84,
        181,
        78,
        82,
        13,
        312,
        308,
        317,
        14,
        87,
    ],
    dtype=np.int64,
)

# Lip contours, from the left mouth corner (image left) to the right one.
UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
# Eyes: upper and lower lid, outer to inner corner (image left eye first).
LEFT_EYE_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
LEFT_EYE_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
RIGHT_EYE_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
RIGHT_EYE_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
FACE_OVAL = [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
]
CHIN = 152

# Ask MediaPipe's C++ logging to keep quiet (it prints some start-up notices regardless, from
# its worker threads; `rtlipsync.logs.native_logs_hidden` keeps those off a terminal).
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def to_68(points: np.ndarray) -> np.ndarray:
    """Map MediaPipe points to the 68-point layout."""
    return points[MP_TO_68]


def face_scale(points: np.ndarray) -> float:
    """A size for the face that does not change when the mouth opens: eye corner to corner."""
    return float(np.linalg.norm(points[263] - points[33]))


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap at the centre of the mouth, relative to `face_scale`."""
    gap = float(np.mean(points[[14, 87, 317], 1] - points[[13, 82, 312], 1]))
    return max(0.0, gap) / max(face_scale(points), 1e-6)


def lip_gap(points: np.ndarray) -> float:
    """Inner-lip gap at the centre (points 13 and 14) over face height (forehead 10 to chin
    152): the realism measures' definition of mouth opening, comparable across faces."""
    gap = float(points[14, 1] - points[13, 1])
    return max(0.0, gap) / max(float(np.linalg.norm(points[CHIN] - points[10])), 1e-6)


class FaceLandmarker:
    """MediaPipe face mesh for one face.

    ``video=True`` tracks the face from frame to frame (steadier points for video sources and
    rendered clips); ``video=False`` treats each image on its own. Not thread-safe: use one
    instance per thread.
    """

    def __init__(self, video: bool = False, min_confidence: float = 0.5) -> None:
        import mediapipe as mp  # heavy import, kept out of module import time

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._lock = threading.Lock()

    def detect(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """Return (478, 2) pixel coordinates of the most prominent face, or None."""
        h, w = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        with self._lock:
            result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x * w, p.y * h) for p in lm], dtype=np.float32)
        return pts

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
