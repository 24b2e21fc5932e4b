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

from rtlipsync.engines import make_engine
from rtlipsync.eval.bilabials import SENTENCES, measure_bilabials
from rtlipsync.eval.lips import ground_truth, medians
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar

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
    os.environ.setdefault("RTLIPSYNC_HOME", tempfile.mkdtemp(prefix="rtlipsync-bench-"))
    engine = make_engine(args.engine)
    print(machine())
    clips = sorted((args.media / "talking").glob("*.mp4"))
    if clips:
        print("ground truth, audio only: clip | r (lag 0) | closed agreement | best r @ lag")
        reports = [ground_truth(c, engine) for c in clips]
        for c in reports:
            r = c.report
            agree = "-" if r.closed_agreement is None else f"{r.closed_agreement:.2f}"
            print(f"  {c.clip:28} {r.r:5.2f} {agree:>5} {r.best_r:5.2f} @ {r.best_lag_ms:+.0f} ms")
        m = medians(reports)
        print(f"  median r {m['r']:.2f} (goal >= 0.45), closed agreement "
              f"{m['closed_agreement']:.2f} (goal >= 0.6)")  # fmt: skip
    else:
        print(f"no talking clips under {args.media / 'talking'}: ground truth skipped")
    ensure_default_avatar()
    avatar = load_avatar("default")
    for label, sentences in (("built-in", SENTENCES), ("held-out", HELD_OUT)):
        reports = measure_bilabials(avatar, engine, sentences)
        for mode, rep in reports.items():
            goal = {"audio": 80, "text": 95}[mode]
            print(
                f"bilabials, {label} sentences, from {mode}: {rep.shut}/{rep.total} = "
                f"{rep.share:.0%} shut (median per sentence {rep.median:.0%}; goal >= {goal} %)"
            )


if __name__ == "__main__":
    main()
