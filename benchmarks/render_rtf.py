"""`rtlipsync render` speed: real-time factor (seconds of speech per second), encode included.

Times the whole offline render (audio decode, engine, H.264/AAC encode, mp4 write) on the
built-in 512x512 avatar, or on another prepared avatar.

    python benchmarks/render_rtf.py [--audio FILE] [--avatar NAME] [--seconds 30]
Goal: >= 10x real time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rtlipsync.face.avatar import ensure_default_avatar
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.media.video import Mp4Writer
from rtlipsync.render import render

from _common import machine, speech_pcm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio", help="speech file (default: generated speech)")
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--preset", default="veryfast", help="x264 preset")
    args = parser.parse_args()
    ensure_default_avatar()
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio
        if audio is None:  # generated speech, as a file like a user would give
            audio = Path(tmp) / "speech.m4a"
            with Mp4Writer(Path(tmp) / "speech.mp4", 16, 16, audio_rate=SAMPLE_RATE) as w:
                w.write_audio(speech_pcm(args.seconds))
            audio = Path(tmp) / "speech.mp4"
        out = Path(tmp) / "out.mp4"
        render(args.avatar, out, audio=audio, progress=False)  # warm-up: rigs, caches
        t0 = time.perf_counter()
        result = render(args.avatar, out, audio=audio, progress=False, preset=args.preset)
        wall = time.perf_counter() - t0
        size = out.stat().st_size
    print(machine())
    print(
        f"avatar: {args.avatar}; speech: {result.audio_seconds:.1f} s; {result.frames} frames; "
        f"x264 {args.preset}"
    )
    print(f"render wall time: {wall:.2f} s ({1000 * wall / result.frames:.2f} ms per frame)")
    print(f"real-time factor: {result.audio_seconds / wall:.1f}x  (goal >= 10x)")
    print(f"output: {size / 1e6:.1f} MB, {8 * size / result.audio_seconds / 1000:.0f} kbit/s")


if __name__ == "__main__":
    main()
