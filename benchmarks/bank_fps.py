"""Serving a baked MuseTalk bank on the CPU: frames per CPU-second at 512 x 512.

The bank is baked here with random-weight networks of MuseTalk's architecture shrunk to
CPU size: serving costs the same whatever the faces look like (JPEG decode once per face,
two optical flows between neighbouring states, one paste), so this measures the serving
path a real, GPU-baked bank takes. Needs the musetalk extra (for the bake only).

    python benchmarks/bank_fps.py [--seconds 20]
Goal: a CPU session holds 25 fps at 512 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rtlipsync.engines.base import render_speech  # noqa: E402
from rtlipsync.engines.cpu import CpuEngine  # noqa: E402
from rtlipsync.engines.musetalk.bank import bake  # noqa: E402
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar, prepare_avatar  # noqa: E402
from rtlipsync.media.frames import SAMPLE_RATE  # noqa: E402

from _common import machine, print_stream, speech_pcm, time_stream  # noqa: E402
from tiny_musetalk import tiny_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    ensure_default_avatar()
    face = Path(tempfile.mkdtemp()) / "face.png"
    cv2.imwrite(str(face), load_avatar("default").frames[0])
    prepare_avatar("bank-bench", face, progress=False, force=True)
    avatar = load_avatar("bank-bench")
    t0 = time.perf_counter()
    bake(avatar, tiny_engine(), progress=False)
    baked = time.perf_counter() - t0
    pcm = speech_pcm(args.seconds)
    list(render_speech(CpuEngine().open_stream(avatar), pcm[:SAMPLE_RATE]))  # decode the faces
    frames, cpu, wall = time_stream(CpuEngine().open_stream(avatar), pcm)
    w, h = avatar.size
    print(machine())
    print(f"bake (tiny random networks on this CPU): {baked:.1f} s for 15 states x 1 frame")
    print_stream(frames, cpu, wall, f"at {w}x{h} served from the bank", "25 for one session")


if __name__ == "__main__":
    main()
