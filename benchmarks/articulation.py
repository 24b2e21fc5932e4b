"""How real the mouth moves: the two realism measures, as `rtlipsync eval` computes them.

1. Ground truth (audio only): each real talking clip's most closed-mouth frame becomes a
   still avatar driven by the clip's own audio (no transcript); the rendered mouth opening is
   compared with the real one (Pearson r at lag 0, closed-mouth agreement, best r within
   +-120 ms). Goals: median r >= 0.45, median closed agreement >= 0.6.
2. Bilabials: espeak-ng sentences rendered from their audio alone and from their timings;
   the share of m/b/p whose middle frame shows shut lips. Goals: >= 80 % from audio, >= 95 %
   from text. Two sets: the built-in sentences and a held-out set written apart from them
   (never used while the articulation was built).

    python benchmarks/articulation.py [--media ../shared/media] [--engine cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from rtlipsync.cli import main as rtlipsync

from _common import machine

HELD_OUT = (
    "Ben's pub by the pier sells pumpkin pie and plum jam.",
    "Impossible problems become simple when you break them up.",
    "The map maker bought a bamboo lamp at the bazaar in Bombay.",
    "Please remember to bring the umbrella back by Monday.",
    "A puppy jumped up and pawed at my empty lunch box.",
    "Members of the public may submit a comment by email.",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    here = Path(__file__).resolve()
    parser.add_argument("--media", type=Path, default=here.parents[2] / "shared" / "media")
    parser.add_argument("--engine", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rtlipsync-bench-"))
    os.environ.setdefault("RTLIPSYNC_HOME", str(work))
    engine = ["--engine", args.engine]
    print(machine())
    clips = sorted((args.media / "talking").glob("*.mp4"))
    if clips:
        print("ground truth, audio only:")
        rtlipsync(["-q", "eval", "lips", "--truth", *map(str, clips), *engine])
    else:
        print(f"no talking clips under {args.media / 'talking'}: ground truth skipped")
    held_out = work / "held-out.txt"
    held_out.write_text("\n".join(HELD_OUT) + "\n", encoding="utf-8")
    print("\nbilabials, built-in sentences:")
    rtlipsync(["-q", "eval", "bilabials", *engine])
    print("\nbilabials, held-out sentences:")
    rtlipsync(["-q", "eval", "bilabials", "--sentences", str(held_out), *engine])


if __name__ == "__main__":
    main()
