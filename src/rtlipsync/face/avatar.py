"""Avatars: a face prepared once (slow) and loaded per session (fast).

An avatar is a folder under ``<data root>/avatars/NAME``::

    manifest.json   format version, source and its hash, options, fps, frame count, size,
                    engines prepared for, frames without a face, bbox_shift range
    frames/         the 25 fps frames, lossless: 000000.png ... (older avatars: .jpg)
    landmarks.npy   (N, 478, 2) float32 MediaPipe points in pixels, NaN where no face
    boxes.npy       (N, 4) int32 MuseTalk crop boxes, -1 where no face
    masks.npz       feathered lower-face masks (N, 256, 256) and their blend boxes (N, 4)
    loop.npy        the idle loop: frame indices forward then reversed, so it never jumps

Preparation writes into a temporary folder and renames it into place, so a failed or
interrupted preparation never leaves a half-made avatar.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from rtlipsync.errors import InputError
from rtlipsync.face import footage
from rtlipsync.face.geometry import (
    NO_BOX,
    bbox_shift_range,
    crop_box,
    landmark_blend_mask,
)
from rtlipsync.face.landmarks import LANDMARK_COUNT, FaceLandmarker, to_68
from rtlipsync.media.frames import FPS
from rtlipsync.media.video import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    even_crop,
    read_image,
    read_video_frames,
    video_info,
)
from rtlipsync.paths import avatars_dir, data_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAME_FORMAT = "png"
DEFAULT_AVATAR = "default"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # (also stated in the OpenAPI document)
_NAME_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class PrepareOptions:
    """What changes the prepared result; preparing again with equal options is a no-op."""

    bbox_shift: int = 0  # MuseTalk v1.0's crop knob, in pixels (v1.5 uses 0)
    extra_margin: int = 10  # MuseTalk v1.5's margin below the chin, in pixels
    max_size: int = 1280  # longest side; larger sources are scaled down
    # An idle clip loops forward and back, so a few seconds suffice, and every frame is held
    # decoded in memory while the avatar is in use (a 720p frame is 2.7 MB): longer sources
    # are cut here, with a warning.
    max_seconds: float = 30.0
    # Talking footage past the idle loop's end still gives the bank of real mouths more
    # shapes to choose from (only its mouths are kept, not its frames).
    footage_seconds: float = 120.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bbox_shift": self.bbox_shift,
            "extra_margin": self.extra_margin,
            "max_size": self.max_size,
            "max_seconds": self.max_seconds,
            "footage_seconds": self.footage_seconds,
            "footage_version": footage.FOOTAGE_VERSION,
            "frames": FRAME_FORMAT,  # an avatar with JPEG frames is prepared again
        }


@dataclass
class Avatar:
    """A prepared avatar, loaded into memory for rendering."""

    name: str
    path: Path
    manifest: dict[str, Any]
    frames: list[np.ndarray]
    landmarks: np.ndarray  # (N, 478, 2), NaN rows where no face was found
    boxes: np.ndarray  # (N, 4)
    loop: np.ndarray  # idle loop order, indices into frames
    extras: dict[str, Any] = field(default_factory=dict)  # engines cache per-avatar state here

    @property
    def still(self) -> bool:
        """True for a single image: the engine then adds blinks and slight head motion."""
        return bool(self.manifest.get("still"))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        return int(self.manifest["width"]), int(self.manifest["height"])


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):  # (match's $ lets a final newline through)
        raise InputError(
            f"invalid avatar name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def avatar_path(name: str) -> Path:
    """Where avatar ``name`` lives; refused if that is a link out of the avatar store (one
    planted in the data root let an avatar name read any folder)."""
    store = avatars_dir()
    path = store / check_name(name)
    if path.is_symlink() and path.resolve().parent != store.resolve():
        raise PermissionError(f"avatar {name!r} is a link out of the data root; remove it")
    return path


def list_avatars() -> list[dict[str, Any]]:
    """Manifests of every prepared avatar, by name."""
    found = []
    store = avatars_dir().resolve()
    for d in sorted(avatars_dir().iterdir()):
        if d.is_symlink() and d.resolve().parent != store:
            continue  # a link out of the store is no avatar of ours
        manifest = d / "manifest.json"
        if d.is_dir() and not d.name.startswith(".") and manifest.is_file():
            found.append(json.loads(manifest.read_text()))
    return found


def face_box(name: str) -> list[int] | None:
    """Where the face usually is in avatar ``name``'s frames, ``[x0, y0, x1, y1]`` in pixels
    (the median of its per-frame face boxes), so a viewer can frame the face of a portrait or
    wide video instead of showing it small in the middle; None without a face."""
    try:
        boxes = np.load(avatar_path(name) / "boxes.npy")
    except (OSError, ValueError):
        return None
    found = boxes[boxes[:, 0] >= 0] if boxes.ndim == 2 and len(boxes) else boxes[:0]
    if not len(found):
        return None
    return [int(v) for v in np.median(found, axis=0)]


def _hash_source(source: Path) -> str:
    h = hashlib.sha256()
    files = [source] if source.is_file() else _image_files(source)
    for f in files:
        if source.is_dir():
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
        key=_natural_key,
    )


def _source_kind(source: Path) -> str:
    if not source.exists():
        raise InputError(f"source not found: {source}")
    if source.is_dir():
        if not _image_files(source):
            raise InputError(f"folder {source} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return "images"
    ext = source.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise InputError(
        f"unsupported source type {ext or '(no extension)'!r} for {source.name}: give an image "
        f"({', '.join(sorted(IMAGE_EXTS))}), a video ({', '.join(sorted(VIDEO_EXTS))}) "
        "or a folder of images"
    )


def _fit(image: np.ndarray, max_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        image = cv2.resize(
            image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
    return even_crop(image)


def _source_frames(source: Path, kind: str) -> tuple[Iterator[np.ndarray], int]:
    if kind == "image":
        return iter([read_image(source)]), 1
    if kind == "images":
        files = _image_files(source)
        return (read_image(f) for f in files), len(files)
    duration, _ = video_info(source)
    return read_video_frames(source, FPS), max(1, round(duration * FPS))


def prepare_avatar(
    name: str,
    source: str | Path,
    options: PrepareOptions | None = None,
    force: bool = False,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prepare (or re-use) avatar ``name`` from an image, a video or a folder of images.

    Returns the manifest. Preparing again with the same source bytes and options returns the
    existing manifest at once. Raises `InputError` for a missing, unreadable or unsupported
    source, or one in which no frame shows a face.
    """
    options = options or PrepareOptions()
    target = avatar_path(name)
    source = Path(source).expanduser().resolve()
    kind = _source_kind(source)
    digest = _hash_source(source)
    existing = target / "manifest.json"
    if existing.is_file() and not force:
        manifest = json.loads(existing.read_text())
        if (
            manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("source", {}).get("sha256") == digest
            and manifest.get("options") == options.as_dict()
        ):
            log.info("avatar %s is up to date", name)
            return manifest

    frames_iter, estimate = _source_frames(source, kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=avatars_dir()))
    try:
        manifest = _prepare_into(
            tmp, name, source, kind, digest, options, frames_iter, estimate, progress, on_progress
        )
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _prepare_into(
    out: Path,
    name: str,
    source: Path,
    kind: str,
    digest: str,
    options: PrepareOptions,
    frames_iter: Iterator[np.ndarray],
    estimate: int,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    (out / "frames").mkdir()
    landmarks: list[np.ndarray] = []
    boxes: list[tuple[int, int, int, int]] = []
    masks: list[np.ndarray] = []
    mask_boxes: list[tuple[int, int, int, int]] = []
    missing: list[int] = []
    size: tuple[int, int] | None = None
    nan_points = np.full((LANDMARK_COUNT, 2), np.nan, np.float32)
    limit = max(1, int(options.max_seconds * FPS))
    # Video and image sequences may be talking footage: their mouths are collected as they
    # pass, and banked at the end if the person talks.
    collector = footage.FootageCollector() if kind != "image" else None
    read_limit = max(limit, int(options.footage_seconds * FPS)) if kind == "video" else limit
    if estimate > limit:
        log.warning(
            "%s lasts %.1f s; keeping the first %.1f s as the idle loop (--max-seconds)",
            source.name,
            estimate / FPS,
            options.max_seconds,
        )
    estimate = min(estimate, read_limit)
    bar = tqdm(total=estimate, desc=f"preparing {name}", unit="frame", disable=not progress)
    with FaceLandmarker(video=kind != "image") as landmarker:
        for i, raw in enumerate(frames_iter):
            if i >= read_limit:
                break
            frame = _fit(raw, options.max_size)
            if i >= limit:  # past the idle loop: only its mouth is wanted
                if collector is not None and frame.shape[1::-1] == size:
                    collector.add(i, frame, landmarker.detect(frame))
                bar.update(1)
                if on_progress is not None:
                    on_progress(i + 1, max(estimate, i + 1))
                continue
            if size is None:
                size = (frame.shape[1], frame.shape[0])
            elif (frame.shape[1], frame.shape[0]) != size:
                raise InputError(
                    f"frame {i} of {source} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                    f"{size[0]}x{size[1]}: all images of an avatar must have one size"
                )
            # Lossless, as the official MuseTalk keeps its frames: every engine pastes its mouth
            # into exactly the source's pixels (JPEG q95 was 44 dB away). Fast PNG compression:
            # preparation stays quick, at about twice JPEG's size on disk.
            png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
            cv2.imwrite(str(out / "frames" / f"{i:06d}.png"), frame, png)
            points = landmarker.detect(frame)
            if collector is not None:
                collector.add(i, frame, points)
            box = None
            if points is not None:
                try:
                    box = crop_box(
                        to_68(points),
                        frame.shape[0],
                        frame.shape[1],
                        options.bbox_shift,
                        options.extra_margin,
                    )
                except ValueError:
                    box = None
            if points is None or box is None:
                missing.append(i)
                points, box = nan_points, None
            landmarks.append(points)
            boxes.append(box or NO_BOX)
            mask, mask_box = landmark_blend_mask(points, box)
            masks.append(mask)
            mask_boxes.append(mask_box)
            bar.update(1)
            if on_progress is not None:
                on_progress(i + 1, max(estimate, i + 1))
    bar.close()
    count = len(landmarks)
    if count == 0:
        raise InputError(f"{source} holds no frames")
    if len(missing) == count:
        raise InputError(
            f"no face found in {source}: use an image or video where one face is clearly "
            "visible, roughly frontal and at least ~100 pixels wide"
        )
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        log.warning(
            "no face found in %d of %d frames (%s); they are kept and shown unchanged",
            len(missing),
            count,
            shown,
        )
    lms = np.stack(landmarks).astype(np.float32)
    np.save(out / "landmarks.npy", lms)
    np.save(out / "boxes.npy", np.array(boxes, np.int32))
    np.savez_compressed(
        out / "masks.npz", masks=np.stack(masks), boxes=np.array(mask_boxes, np.int32)
    )
    loop = np.concatenate([np.arange(count), np.arange(count)[::-1]]) if count > 1 else np.zeros(1)
    np.save(out / "loop.npy", loop.astype(np.int32))
    faces = [to_68(p) for p, b in zip(lms, boxes, strict=True) if b[0] >= 0]
    assert size is not None
    found = None
    if collector is not None:
        found = footage.build(collector, _footage_audio(source, kind), lms, out)
        log.info("avatar %s: %s", name, found.message)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": kind,
        "source": {"path": str(source), "sha256": digest},
        "options": options.as_dict(),
        "fps": FPS,
        "frame_count": count,
        "width": size[0],
        "height": size[1],
        "still": count == 1,
        "faces_missing": missing,
        "bbox_shift_range": list(bbox_shift_range(faces)),
        "engines": ["cpu"],
        "landmarks": "mediapipe-face-mesh",
        "footage": found.as_dict() if found is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _footage_audio(source: Path, kind: str) -> np.ndarray | None:
    """The footage's own sound at 16 kHz, from which the bank learns how this person's mouth
    follows speech; None for image sequences and videos without an audio track."""
    if kind != "video":
        return None
    from rtlipsync.media.audio import load_audio

    try:
        return load_audio(source, 16000)[0]
    except InputError:
        return None


def _swap_into_place(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_loaded: dict[tuple[str, float], Avatar] = {}


def load_avatar(name: str) -> Avatar:
    """Load a prepared avatar (cached in memory while its manifest is unchanged)."""
    path = avatar_path(name)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        if name == DEFAULT_AVATAR:
            ensure_default_avatar()
        else:
            known = ", ".join(m["name"] for m in list_avatars()) or "none yet"
            raise InputError(
                f"no avatar named {name!r} (prepared: {known}); "
                f"run: rtlipsync avatar prepare {name} IMAGE_OR_VIDEO"
            )
    key = (str(path), manifest_path.stat().st_mtime)
    if key in _loaded:
        return _loaded[key]
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"avatar {name!r} was prepared by another version (format "
            f"{manifest.get('format_version')}); prepare it again with --force"
        )
    frames = []
    # Avatars prepared before frames were lossless hold JPEG frames, still loaded as they are.
    ext = "jpg" if (path / "frames" / "000000.jpg").exists() else "png"
    for i in range(manifest["frame_count"]):
        image = cv2.imread(str(path / "frames" / f"{i:06d}.{ext}"), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(
                f"avatar {name!r} is damaged (frame {i}); prepare it again with --force"
            )
        frames.append(image)
    avatar = Avatar(
        name=name,
        path=path,
        manifest=manifest,
        frames=frames,
        landmarks=np.load(path / "landmarks.npy"),
        boxes=np.load(path / "boxes.npy"),
        loop=np.load(path / "loop.npy"),
    )
    _loaded.clear()  # keep one generation per process; the server keeps its own references
    _loaded[key] = avatar
    return avatar


def parsed_masks_name(mode: str = "jaw") -> str:
    """The file, in an avatar's ``musetalk/`` folder, of its face-parsed blend masks."""
    return f"masks-{mode}.npz"


def blend_masks(avatar: Avatar, mode: str = "jaw") -> tuple[Sequence[np.ndarray], np.ndarray]:
    """Blend masks (one per frame, each stretched over its blend box) and their (N, 4) blend
    boxes, loaded once: the face-parsed ones of ``mode`` where the MuseTalk engine made them
    (full size), else the landmark masks (256 square)."""
    cached = avatar.extras.get("blend_masks")
    if cached is None or cached[0] != mode:
        parsed = avatar.path / "musetalk" / parsed_masks_name(mode)
        if parsed.exists():
            with np.load(parsed) as data:
                masks: Sequence[np.ndarray] = [data[f"mask{i}"] for i in range(len(data["boxes"]))]
                boxes = data["boxes"]
        else:
            with np.load(avatar.path / "masks.npz") as data:
                masks, boxes = data["masks"], data["boxes"]
        cached = avatar.extras["blend_masks"] = (mode, (masks, boxes))
    return cached[1]


def default_avatar_source() -> Path:
    """The built-in face: Grace Hopper's public-domain portrait that ships inside matplotlib.

    Cropped to 512x512 around the face and written under the data root, so no download is
    ever needed.
    """
    out = data_root() / "sources" / "default.png"
    if out.is_file():
        return out
    import matplotlib

    portrait = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = read_image(portrait)
    h, w = image.shape[:2]
    side = min(h, w, 512)
    x0 = (w - side) // 2
    square = image[0:side, x0 : x0 + side]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.png")  # (processes starting together)
    cv2.imwrite(str(tmp), square)
    os.replace(tmp, out)
    return out


def ensure_default_avatar(progress: bool = False) -> dict[str, Any]:
    """Prepare the built-in avatar on first use (a second or two, offline)."""
    return prepare_avatar(DEFAULT_AVATAR, default_avatar_source(), progress=progress)
