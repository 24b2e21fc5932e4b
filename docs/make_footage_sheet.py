"""Side-by-side stills of footage-bank avatars against the real person, in docs/:

``footage-NAME.png``: for a real talking clip, an avatar is prepared from its first 60 %
(`rtlipsync eval lips --footage` does the same) and driven by the audio of the last 40 %;
each row is one moment of that last 40 %: the real frame (left) and ours (right), the face
at the source's own resolution, every 0.4 s. ``--reverse`` learns from the last 60 % and
shows the first 40 % instead (``footage-reverse-NAME.png``), the split that
`rtlipsync eval lips --footage --reverse` measures.

    python docs/make_footage_sheet.py --clip ../shared/media/talking/latentsync-demo3.mp4
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from rtlipsync.eval.lips import footage_truth
from rtlipsync.face.landmarks import FaceLandmarker, face_scale
from rtlipsync.media.video import read_video_frames

ROWS = 5
STEP = 10  # frames between rows (0.4 s)


def face_crop(image: np.ndarray, points: np.ndarray, scale: float) -> np.ndarray:
    """The face from brows to below the chin, ``scale`` pixels per eye distance."""
    s = face_scale(points)
    cx, cy = points[[33, 263, 13, 14]].mean(axis=0)
    half_w, top, bottom = 1.4 * s, 1.0 * s, 2.0 * s
    x0, y0 = int(cx - half_w), int(cy - top)
    crop = image[max(y0, 0) : int(cy + bottom), max(x0, 0) : int(cx + half_w)]
    k = scale / s
    return cv2.resize(crop, (int(round(2 * half_w * k)), int(round((top + bottom) * k))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--reverse", action="store_true", help="learn from the end, show the start")
    args = parser.parse_args()
    tag = "-reverse" if args.reverse else ""
    os.environ.setdefault("RTLIPSYNC_HOME", tempfile.mkdtemp(prefix="rtlipsync-sheet-"))
    with tempfile.TemporaryDirectory() as tmp:
        footage_truth(args.clip, keep=tmp, reverse=args.reverse)
        ours = list(read_video_frames(Path(tmp) / f"{args.clip.stem}-footage{tag}.mp4"))
    real = list(read_video_frames(args.clip))
    cut = 0 if args.reverse else int(len(real) * 0.6)
    rows = []
    with FaceLandmarker() as lm:
        scale = None
        for k in range(STEP, min(len(ours), len(real) - cut), STEP)[:ROWS]:
            pair = []
            for image in (real[cut + k], ours[k]):
                points = lm.detect(image)
                if points is None:
                    break
                if scale is None:  # the real clip's own pixels per eye distance
                    scale = face_scale(points)
                pair.append(face_crop(image, points, scale))
            if len(pair) == 2:
                h = min(p.shape[0] for p in pair)
                gap = np.full((h, 6, 3), 255, np.uint8)
                rows.append(np.hstack([pair[0][:h], gap, pair[1][:h]]))
    width = min(r.shape[1] for r in rows)
    gap = np.full((6, width, 3), 255, np.uint8)
    sheet = np.vstack([np.vstack([r[:, :width], gap]) for r in rows])
    out = args.out / f"footage{tag}-{args.clip.stem}.png"
    cv2.imwrite(str(out), sheet)
    print(out)


if __name__ == "__main__":
    main()
