"""Avatar preparation on real faces: landmarks, crop boxes, masks, loop, caching, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from rtlipsync.errors import InputError
from rtlipsync.face.avatar import (
    PrepareOptions,
    check_name,
    default_avatar_source,
    list_avatars,
    load_avatar,
    prepare_avatar,
)
from rtlipsync.face.geometry import MASK_SIZE, crop_box
from rtlipsync.face.landmarks import to_68
from rtlipsync.paths import avatars_dir

from conftest import media


def leftovers() -> list[str]:
    """Hidden folders in the avatar store: half-made avatars that must never remain."""
    return [p.name for p in avatars_dir().iterdir() if p.name.startswith(".")]


def face_video(path: Path, fps: int, blank: range) -> Path:
    """The default face drifting sideways at ``fps``, with blank (faceless) frames in ``blank``."""
    face = cv2.imread(str(default_avatar_source()))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = face.shape[1], face.shape[0]
        s.pix_fmt = "yuv420p"
        for i in range(fps):  # one second
            img = np.full_like(face, 90) if i in blank else np.roll(face, i, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def test_default_avatar_is_a_prepared_real_face(default_avatar) -> None:
    m = default_avatar.manifest
    assert (m["width"], m["height"]) == (512, 512)
    assert m["still"] and m["frame_count"] == 1 and m["faces_missing"] == []
    points = default_avatar.landmarks[0]
    assert points.shape == (478, 2) and not np.isnan(points).any()
    # The mouth lies inside the face's crop box, below the eyes.
    x1, y1, x2, y2 = default_avatar.boxes[0]
    for k in (13, 14, 61, 291):
        assert x1 <= points[k, 0] <= x2 and y1 <= points[k, 1] <= y2
    assert points[13, 1] > points[159, 1]
    assert [a["name"] for a in list_avatars()].count("default") == 1


def test_crop_box_follows_musetalk_rules(default_avatar) -> None:
    lm68 = to_68(default_avatar.landmarks[0])
    x1, y1, x2, y2 = crop_box(lm68, 512, 512, bbox_shift=0, extra_margin=0)
    assert y2 == int(lm68[:, 1].max())  # bottom on the chin
    assert abs((y1 + y2) / 2 - int(lm68[29, 1])) <= 1  # midline on landmark 29
    assert (x1, x2) == (int(lm68[:, 0].min()), int(lm68[:, 0].max()))
    _, y1s, _, y2s = crop_box(lm68, 512, 512, bbox_shift=5, extra_margin=0)
    assert (y1s - y1, y2s - y2) == (10, 0)  # bbox_shift moves the top by twice the shift
    _, y1m, _, y2m = crop_box(lm68, 512, 512, bbox_shift=0, extra_margin=10)
    assert (y1m, y2m) == (y1, y2 + 10)  # v1.5's margin extends below the chin only


def test_blend_mask_is_feathered_lower_face(default_avatar) -> None:
    masks = np.load(default_avatar.path / "masks.npz")["masks"]
    mask = masks[0]
    assert mask.shape == (MASK_SIZE, MASK_SIZE)
    # Nothing above the centre line but the blur's bleed (its kernel is 10% of the side).
    assert mask[: MASK_SIZE // 2 - MASK_SIZE // 20 - 1].max() == 0
    assert mask.max() >= 250  # fully opaque over the mouth
    soft = ((mask > 5) & (mask < 250)).sum()
    assert soft > 0.05 * (mask > 5).sum()  # a feathered edge, not a hard cut


def test_video_avatar_normalises_fps_and_keeps_faceless_frames_aligned(tmp_path: Path) -> None:
    video = face_video(tmp_path / "clip.mp4", fps=30, blank=range(12, 15))
    m = prepare_avatar("clip", video, progress=False)
    assert m["frame_count"] == 25 and m["fps"] == 25 and not m["still"]
    avatar = load_avatar("clip")
    missing = m["faces_missing"]
    assert missing, "the blank frames must be reported"
    for i in range(25):
        blank = float(avatar.frames[i].std()) < 5
        assert (i in missing) == blank  # every frame is kept, in order
        assert np.isnan(avatar.landmarks[i]).all() == blank
        assert (avatar.boxes[i] < 0).all() == blank
    assert list(avatar.loop) == list(range(25)) + list(range(24, -1, -1))
    # The face drifts right by one pixel per source frame: landmarks follow it.
    xs = [avatar.landmarks[i, 1, 0] for i in range(25) if i not in missing]
    assert xs[-1] - xs[0] > 15


def test_preparing_again_is_a_no_op_unless_something_changed(tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(default_avatar_source().read_bytes())
    first = prepare_avatar("again", image, progress=False)
    frame = avatars_dir() / "again" / "frames" / "000000.png"
    stamp = frame.stat().st_mtime_ns
    # Lossless: the stored frame is the source's pixels exactly.
    assert np.array_equal(cv2.imread(str(frame)), load_avatar("again").frames[0])
    assert np.array_equal(load_avatar("again").frames[0], cv2.imread(str(image)))
    assert prepare_avatar("again", image, progress=False)["created"] == first["created"]
    assert frame.stat().st_mtime_ns == stamp
    shifted = prepare_avatar("again", image, PrepareOptions(bbox_shift=4), progress=False)
    assert shifted["options"]["bbox_shift"] == 4
    assert frame.stat().st_mtime_ns != stamp
    cv2.imwrite(str(image), cv2.flip(cv2.imread(str(image)), 1))  # new source bytes
    flipped = prepare_avatar("again", image, PrepareOptions(bbox_shift=4), progress=False)
    assert flipped["source"]["sha256"] != shifted["source"]["sha256"]
    assert leftovers() == []


def test_folder_of_images(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    face = cv2.imread(str(default_avatar_source()))
    for i in (10, 2, 1):  # natural order: 1, 2, 10
        cv2.imwrite(str(folder / f"{i}.png"), np.roll(face, i * 3, axis=1))
    m = prepare_avatar("folder", folder, progress=False)
    assert m["frame_count"] == 3 and m["kind"] == "images"
    xs = load_avatar("folder").landmarks[:, 1, 0]
    assert xs[0] < xs[1] < xs[2]
    cv2.imwrite(str(folder / "11.png"), face[:100, :100])
    with pytest.raises(InputError, match="one size"):
        prepare_avatar("folder2", folder, progress=False)
    assert not (avatars_dir() / "folder2").exists() and leftovers() == []


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("flat.png", "flat", "no face found"),
        ("broken.jpg", b"\xff\xd8 not really a jpeg", "cannot decode image"),
        ("broken.mp4", b"\x00\x00\x00\x18ftypmp42 garbage" * 4, "cannot read video"),
        ("notes.txt", b"hello", "unsupported source type"),
        ("missing.png", None, "not found"),
    ],
)
def test_bad_sources_are_refused_and_leave_nothing(
    tmp_path: Path, filename: str, content, message: str
) -> None:
    source = tmp_path / filename
    if content == "flat":
        cv2.imwrite(str(source), np.full((256, 256, 3), 128, np.uint8))
    elif content is not None:
        source.write_bytes(content)
    with pytest.raises(InputError, match=message):
        prepare_avatar("bad", source, progress=False)
    assert not (avatars_dir() / "bad").exists()
    assert leftovers() == []


def test_bad_names_and_unknown_avatars() -> None:
    with pytest.raises(InputError, match="invalid avatar name"):
        prepare_avatar("../escape", default_avatar_source())
    for name in ("trailing\n", "a/b", "", "-x", "x" * 65):  # (a final newline passed once)
        with pytest.raises(InputError, match="invalid avatar name"):
            check_name(name)
    with pytest.raises(InputError, match="no avatar named 'nobody'"):
        load_avatar("nobody")


@pytest.mark.parametrize("clip", ["sun.mp4", "yongen.mp4"])
def test_shared_media_videos(clip: str) -> None:
    m = prepare_avatar(Path(clip).stem, media(clip), progress=False)
    assert m["frame_count"] > 200
    assert len(m["faces_missing"]) <= 0.02 * m["frame_count"]
    manifest = json.loads((avatars_dir() / Path(clip).stem / "manifest.json").read_text())
    lo, hi = manifest["bbox_shift_range"]
    assert lo < 0 < hi


def test_long_sources_are_cut_to_max_seconds(tmp_path: Path) -> None:
    video = face_video(tmp_path / "long.mp4", fps=30, blank=range(0))
    m = prepare_avatar("cut", video, PrepareOptions(max_seconds=0.4), progress=False)
    assert m["frame_count"] == 10 and m["options"]["max_seconds"] == 0.4
