"""Sync of a session served from a bank, against the CPU engine drawing the same mouths.

The real weights are needed for a MuseTalk bank's own figures. What this measures is the
bank's serving path: each avatar gets a bank of the CPU engine's own drawn mouths (one per
grid state, tests/reference_bank.py), the speech is rendered once from the bank (nearest two
states, optical flow between them) and once by the CPU engine directly, and both renders go
through `rtlipsync eval sync`. The difference is what the 5 x 3 state grid and the
interpolation cost; a MuseTalk bank adds MuseTalk's own accuracy on top.

    python benchmarks/bank_sync.py [--media ../shared/media] [--seconds 60]
Goals (as for the CPU engine): correlation >= 0.4 (a floor), lag -100..+40 ms, silence
motion <= 0.25, silence opening <= 0.5.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rtlipsync.eval.sync import measure_sync  # noqa: E402
from rtlipsync.face.avatar import ensure_default_avatar, load_avatar, prepare_avatar  # noqa: E402
from rtlipsync.media.audio import load_audio, to_int16  # noqa: E402
from rtlipsync.media.frames import SAMPLE_RATE  # noqa: E402
from rtlipsync.render import render  # noqa: E402
from rtlipsync.testing.speech import write_wav  # noqa: E402

from _common import machine  # noqa: E402
from reference_bank import bake_reference  # noqa: E402


def write_clip(source: Path, seconds: float, out: Path) -> Path:
    x, _ = load_audio(source, SAMPLE_RATE)
    return write_wav(out, to_int16(x[: int(seconds * SAMPLE_RATE)]), SAMPLE_RATE)


def main() -> None:
    parser = argparse.ArgumentParser()
    here = Path(__file__).resolve()
    parser.add_argument("--media", type=Path, default=here.parents[2] / "shared" / "media")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    ensure_default_avatar()
    face = work / "face.png"
    cv2.imwrite(str(face), load_avatar("default").frames[0])
    sources = {"default": face}
    for name in ("sun", "yongen"):
        if (args.media / f"{name}.mp4").exists():
            sources[name] = args.media / f"{name}.mp4"
    clips = [args.media / f"{n}.wav" for n in ("eng", "sun", "yongen")]
    clips = [c for c in clips if c.exists()]
    print(machine())
    print("avatar | speech | direct: r, lag | bank: r, lag, silence motion, silence opening")
    for name, source in sources.items():
        for variant in ("direct", "bank"):
            prepare_avatar(f"sync-{variant}-{name}", source, progress=False, force=True)
        bake_reference(load_avatar(f"sync-bank-{name}"))
        for clip in clips:
            wav = write_clip(clip, args.seconds, work / f"{clip.stem}.wav")
            rows = {}
            for variant in ("direct", "bank"):
                out = render(
                    f"sync-{variant}-{name}", work / f"{variant}.mp4", audio=wav, progress=False
                )
                rows[variant] = measure_sync(out.path)
            d, b = rows["direct"], rows["bank"]

            def fmt(v: float | None) -> str:
                return "-" if v is None else f"{v:.3f}"

            print(
                f"{name} | {clip.name} | {d.correlation:.3f}, {d.lag_ms:+.0f} ms | "
                f"{b.correlation:.3f}, {b.lag_ms:+.0f} ms, {fmt(b.silence_motion)}, "
                f"{fmt(b.silence_open)}",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
