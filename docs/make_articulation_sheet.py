"""Contact sheets of the articulation, in docs/:

- ``articulation-NAME.png``: the mouth at the middle of each phoneme of a bilabial-rich
  sentence (espeak-ng), rendered from the audio alone (top row) and from the voice's own
  timings (bottom row), labelled with the phoneme, on the default avatar and on a real
  talking clip's still;
- ``truth-NAME.png``: a real talking clip against the same face driven by the clip's audio
  alone, frame by frame (top: the real person; bottom: the render), every 80 ms.

    python docs/make_articulation_sheet.py [--clip ../shared/media/talking/video-retalking-2.mp4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from rtlipsync.articulation.phonemes import viseme_of
from rtlipsync.engines.base import render_speech
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.face.avatar import Avatar, ensure_default_avatar, load_avatar, prepare_avatar
from rtlipsync.media.frames import FPS, SAMPLE_RATE
from rtlipsync.speech.espeak import EspeakTTS

SENTENCE = "Bob and Pam may buy a map of the bamboo market."
TILE = 96


def mouth_box(avatar: Avatar) -> tuple[int, int, int, int]:
    pts = avatar.landmarks[0]
    cx, cy = (pts[13] + pts[14]) / 2
    half = 0.9 * float(np.linalg.norm(pts[291] - pts[61]))
    return int(cx - half), int(cy - 0.75 * half), int(cx + half), int(cy + 0.85 * half)


def label(symbol: str) -> str:
    """The phoneme as OpenCV can write it: its own letters when ASCII, else its viseme."""
    shape = viseme_of(symbol)
    name = shape.name if shape is not None else "-"
    plain = symbol.strip("ˈˌː")
    return f"{plain} {name}" if plain.isascii() else name


def tile(image: np.ndarray, box: tuple[int, int, int, int], label: str) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = cv2.resize(image[max(0, y0) : y1, max(0, x0) : x1], (TILE, TILE),
                      interpolation=cv2.INTER_AREA)  # fmt: skip
    cv2.putText(crop, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                cv2.LINE_AA)  # fmt: skip
    return crop


def sheet(avatar: Avatar, out: Path) -> None:
    speech = EspeakTTS().synthesize(SENTENCE).at_rate(SAMPLE_RATE)
    box = mouth_box(avatar)
    rows = []
    for timings in ((), speech.phonemes):
        frames = list(render_speech(CpuEngine().open_stream(avatar), speech.pcm, timings))
        row = []
        for p in speech.phonemes:
            if not p.symbol.strip():
                continue
            f = min(int((p.start + p.duration / 2) * FPS), len(frames) - 1)
            row.append(tile(frames[f].image, box, label(p.symbol)))
        rows.append(np.hstack(row))
    header = np.zeros((18, rows[0].shape[1], 3), np.uint8)
    caption = f'"{SENTENCE}"  top: from audio alone   bottom: from text (timings)'
    cv2.putText(header, caption, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)  # fmt: skip
    cv2.imwrite(str(out), np.vstack([header, *rows]))


def truth_strip(clip: Path, out: Path, seconds: float = 4.0) -> None:
    from rtlipsync.eval.lips import most_closed_frame
    from rtlipsync.media.video import read_video_frames
    from rtlipsync.render import render

    still, _ = most_closed_frame(clip)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "still.png"
        cv2.imwrite(str(image), still)
        prepare_avatar("sheet-truth", image, progress=False)
        avatar = load_avatar("sheet-truth")
        rendered = Path(tmp) / "rendered.mp4"
        render("sheet-truth", rendered, audio=clip, progress=False)
        real = list(read_video_frames(clip, FPS))
        ours = list(read_video_frames(rendered, FPS))
    box = mouth_box(avatar)
    scale = avatar.size[0] / real[0].shape[1]
    top, bottom = [], []
    for f in range(0, min(len(real), len(ours), int(seconds * FPS)), 2):
        r = cv2.resize(real[f], avatar.size) if scale != 1 else real[f]
        top.append(tile(r, box, f"{f * 40} ms"))
        bottom.append(tile(ours[f], box, ""))
    width = 16 * TILE
    rows = []
    for k in range(0, len(top), 16):
        pair = [np.hstack(top[k : k + 16]), np.hstack(bottom[k : k + 16])]
        pair = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in pair]
        rows += [*pair, np.zeros((6, width, 3), np.uint8)]
    cv2.imwrite(str(out), np.vstack(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parent
    parser.add_argument(
        "--clip", type=Path,
        default=here.parents[1] / "shared/media/talking/video-retalking-2.mp4",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("RTLIPSYNC_HOME", tempfile.mkdtemp(prefix="rtlipsync-sheet-"))
    ensure_default_avatar()
    sheet(load_avatar("default"), here / "articulation-default.png")
    if args.clip.is_file():
        from rtlipsync.eval.lips import most_closed_frame

        still, _ = most_closed_frame(args.clip)
        with tempfile.TemporaryDirectory() as tmp:
            cv2.imwrite(str(Path(tmp) / "still.png"), still)
            prepare_avatar("sheet-clip", Path(tmp) / "still.png", progress=False)
        sheet(load_avatar("sheet-clip"), here / f"articulation-{args.clip.stem}.png")
        truth_strip(args.clip, here / f"truth-{args.clip.stem}.png")


if __name__ == "__main__":
    main()
