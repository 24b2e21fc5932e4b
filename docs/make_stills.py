"""Write the mouth stills in docs/: closed, half-open, open, rounded and spread, on the default
avatar, on a video avatar (``--video``) and on a talking clip's still (``--clip``: its most
closed-mouth frame, as the ground-truth measure uses), cropped around the face at full size,
plus 3x close-ups of the mouth.

    python docs/make_stills.py [--video PATH] [--clip PATH] [--full-hd PATH]

``--full-hd`` (default: a 1080x1920 talking clip) makes a still avatar of that clip's most
closed-mouth frame at its full resolution, so the mouth's edges can be checked for a seam,
colour step or resolution step where the frame is 1080p.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from rtlipsync.articulation import MouthParams
from rtlipsync.engines.cpu.engine import avatar_rigs
from rtlipsync.face.avatar import (
    PrepareOptions,
    ensure_default_avatar,
    load_avatar,
    prepare_avatar,
)

SHAPES = {
    "closed": MouthParams(0.0),
    "half": MouthParams(0.45),
    "open": MouthParams(0.9),
    "round": MouthParams(0.5, width=-1.0),
    "spread": MouthParams(0.35, width=1.0),
}


def stills(name: str, frame_index: int, out_dir: Path) -> None:
    avatar = load_avatar(name)
    rig = avatar_rigs(avatar).rig(frame_index)
    assert rig is not None, f"no face in frame {frame_index} of {name}"
    base = avatar.frames[frame_index]
    pts = avatar.landmarks[frame_index]
    x0, y0 = np.maximum(pts.min(axis=0) - 30, 0).astype(int)
    x1, y1 = (pts.max(axis=0) + 30).astype(int)
    m = pts[[61, 291, 13, 14, 152]]
    mx0, my0 = np.maximum(m.min(axis=0) - [25, 30], 0).astype(int)
    mx1, my1 = (m.max(axis=0) + [25, 5]).astype(int)
    tiles, closeups = [], []
    for label, params in SHAPES.items():
        image = rig.render(base, params)
        zoom = cv2.resize(image[my0:my1, mx0:mx1], None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        closeups.append(zoom)
        crop = image[y0:y1, x0:x1].copy()
        cv2.putText(
            crop, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
        tiles.append(crop)
    cv2.imwrite(str(out_dir / f"mouths-{name}.png"), np.hstack(tiles))
    cv2.imwrite(str(out_dir / f"mouths-{name}-closeup.png"), np.hstack(closeups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=Path("../shared/media/sun.mp4"))
    parser.add_argument(
        "--clip", type=Path, default=Path("../shared/media/talking/video-retalking-2.mp4")
    )
    parser.add_argument(
        "--full-hd", type=Path, default=Path("../shared/media/talking/latentsync-demo3.mp4")
    )
    args = parser.parse_args()
    out_dir = Path(__file__).parent
    ensure_default_avatar()
    stills("default", 0, out_dir)
    if args.video.is_file():
        prepare_avatar(args.video.stem, args.video)
        stills(args.video.stem, 100, out_dir)
    if args.clip.is_file():
        still_avatar(args.clip, f"still-{args.clip.stem}", PrepareOptions())
        stills(f"still-{args.clip.stem}", 0, out_dir)
    if args.full_hd.is_file():
        name = f"still-{args.full_hd.stem}-full"
        still_avatar(args.full_hd, name, PrepareOptions(max_size=1920))
        assert max(load_avatar(name).frames[0].shape[:2]) == 1920, "not a 1080p clip"
        stills(name, 0, out_dir)


def still_avatar(clip: Path, name: str, options: PrepareOptions) -> None:
    """An avatar of ``clip``'s most closed-mouth frame (as the ground-truth measure makes)."""
    import tempfile

    from rtlipsync.eval.lips import most_closed_frame

    still, _ = most_closed_frame(clip)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "still.png"
        cv2.imwrite(str(image), still)
        prepare_avatar(name, image, options)


if __name__ == "__main__":
    main()
