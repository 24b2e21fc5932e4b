"""``blink-default.png``: the built-in face's eyes open, half shut and shut mid-sentence
(the mouth open), at full size and twice enlarged, to check that the glasses stay straight.

    python docs/make_blink_still.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from rtlipsync.articulation import MouthParams
from rtlipsync.engines.cpu.engine import avatar_rigs
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar


def main() -> None:
    os.environ.setdefault("RTLIPSYNC_HOME", tempfile.mkdtemp(prefix="rtlipsync-still-"))
    ensure_default_avatar()
    avatar = load_avatar("default")
    rig = avatar_rigs(avatar).rig(0)
    base = avatar.frames[0]
    speaking = MouthParams(open=0.5)
    shots = [rig.render(base, speaking, blink, (0.0, 0.0, 0.0)) for blink in (0.0, 0.5, 1.0)]
    pts = avatar.landmarks[0]
    y = int(pts[[33, 263], 1].mean())
    x0, x1 = int(pts[33, 0] - 60), int(pts[263, 0] + 60)
    eyes = [cv2.resize(s[y - 70 : y + 50, x0:x1], None, fx=2, fy=2) for s in shots]
    gap = np.full((eyes[0].shape[0], 8, 3), 255, np.uint8)
    top = np.hstack([eyes[0], gap, eyes[1], gap, eyes[2]])
    faces = np.hstack([shots[0], np.full((512, 8, 3), 255, np.uint8), shots[2]])
    width = max(top.shape[1], faces.shape[1])
    pad = [
        np.pad(im, ((0, 8), (0, width - im.shape[1]), (0, 0)), constant_values=255)
        for im in (top, faces)
    ]
    out = Path(__file__).parent / "blink-default.png"
    cv2.imwrite(str(out), np.vstack(pad))
    print(out)


if __name__ == "__main__":
    main()
