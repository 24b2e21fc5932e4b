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

from _common import machine, speech_pcm  # noqa: E402


def tiny_engine():  # noqa: ANN201
    import diffusers
    import torch
    import transformers

    from rtlipsync.engines.musetalk.engine import MuseTalkEngine, MuseTalkNets

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=384, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    ).eval()  # fmt: skip
    encoder = transformers.WhisperModel(
        transformers.WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                                   encoder_ffn_dim=1536, decoder_layers=1)
    ).encoder.eval()  # fmt: skip
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    return MuseTalkEngine(MuseTalkNets(unet, vae, encoder, extractor, "v15"))


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
    stream = CpuEngine().open_stream(avatar)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    frames = list(render_speech(stream, pcm))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    w, h = avatar.size
    print(machine())
    print(f"bake (tiny random networks on this CPU): {baked:.1f} s for 15 states x 1 frame")
    print(f"frames: {len(frames)} at {w}x{h} served from the bank")
    print(f"CPU time per frame: {1000 * cpu / len(frames):.2f} ms")
    print(f"frames per CPU-second: {len(frames) / cpu:.0f}  (25 needed for one live session)")
    print(f"wall-clock fps: {len(frames) / wall:.0f}")


if __name__ == "__main__":
    main()
