"""CPU engine throughput: frames per CPU-second at 512x512, video encode excluded.

Renders speech through a CPU engine stream on the built-in 512x512 avatar (a still image, so
blinks and head sway are drawn too: the most work per frame) and counts CPU time across all
threads (time.process_time), so it says how many frames one core makes in a second.

    python benchmarks/engine_fps.py [--seconds 20] [--audio FILE]
Goal: >= 200 frames per CPU-second.
"""

from __future__ import annotations

import argparse

from rtlipsync.engines.base import render_speech
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar
from rtlipsync.media.frames import SAMPLE_RATE

from _common import machine, print_stream, speech_pcm, time_stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--audio")
    args = parser.parse_args()
    ensure_default_avatar()
    avatar = load_avatar("default")
    pcm = speech_pcm(args.seconds, args.audio)
    warm = CpuEngine().open_stream(avatar)
    list(render_speech(warm, pcm[:SAMPLE_RATE]))  # build the rig, warm caches
    frames, cpu, wall = time_stream(CpuEngine().open_stream(avatar), pcm)
    w, h = avatar.size
    print(machine())
    speech = f"at {w}x{h} ({len(pcm) / SAMPLE_RATE:.1f} s of speech)"
    print_stream(frames, cpu, wall, speech, "goal >= 200")


if __name__ == "__main__":
    main()
