"""How long preparing an avatar from 60 s of 1080p talking footage takes (with its bank).

    python benchmarks/footage_prepare.py [--video FILE] [--seconds 60]

Without ``--video`` the footage is one 1080x1920 talking clip of ``../shared/media/talking``
(one person: an avatar is one person) played again and again, video and audio, until
``--seconds`` are filled.
Goal: under 2 minutes for 60 s of 1080p.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rtlipsync.face.avatar import prepare_avatar
from rtlipsync.media.audio import load_audio
from rtlipsync.media.frames import FPS, FRAME_SAMPLES, SAMPLE_RATE
from rtlipsync.media.video import Mp4Writer, read_video_frames

from _common import machine

TALKING = Path(__file__).resolve().parents[2] / "shared" / "media" / "talking"


def footage(out: Path, seconds: float) -> Path:
    """``seconds`` of a 1080p talking clip, repeated, with its sound."""
    clips = [TALKING / "latentsync-demo3.mp4"]
    if not clips[0].is_file():
        raise SystemExit(f"no talking clip {clips[0]}: pass --video FILE")
    wanted = int(seconds * FPS)
    written = 0
    writer = None
    while written < wanted:
        for clip in clips:
            audio, _ = load_audio(clip, SAMPLE_RATE)
            for i, frame in enumerate(read_video_frames(clip)):
                if written >= wanted:
                    break
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = Mp4Writer(out, w, h, FPS, SAMPLE_RATE, preset="ultrafast")
                if frame.shape[:2] != (h, w):
                    continue
                writer.write_video(frame)
                writer.write_audio(audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
                written += 1
    assert writer is not None
    return writer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--video", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or footage(Path(tmp) / "footage.mp4", args.seconds)
        t0 = time.monotonic()
        manifest = prepare_avatar("bench-footage-1080p", video, force=True, progress=True)
        took = time.monotonic() - t0
    print(manifest["footage"]["message"])
    print(
        f"prepared {args.seconds:.0f} s of {manifest['width']}x{manifest['height']} "
        f"(source scaled to the avatar's max size) in {took:.1f} s  (goal < 120 s)"
    )


if __name__ == "__main__":
    main()
