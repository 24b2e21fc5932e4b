"""MuseTalk throughput: UNet (t = 0) + VAE decode per frame, at batch sizes 1-64.

Prints frames per second per batch size, how many 25 fps sessions that sustains, the same
with each face pasted back into a 576 x 768 frame on the device (against the CPU's paste per
frame), the time to the first frame of an utterance (its first Whisper block + one batch),
and the fp16 output's PSNR against fp32 on the same inputs. Uses the official weights when
they are in the data root; ``--random`` times networks of the official architecture with
random weights instead (the same arithmetic, so the same speed; the PSNR is then only
indicative).

    python benchmarks/musetalk_gpu.py [--device cuda] [--batches 1,4,8,16,32,64] [--random]
Goal on an H100: >= 400 fps aggregate at PSNR >= 35 dB against fp32.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from rtlipsync.engines.musetalk import weights
from rtlipsync.engines.musetalk.features import AudioFeatures
from rtlipsync.engines.musetalk.model import (
    UNET_CONFIG,
    VAE_CONFIG,
    WHISPER_TINY_CONFIG,
    load_unet,
    load_vae,
    load_whisper_encoder,
    unet_from_config,
)
from rtlipsync.engines.musetalk.pipeline import DeviceBlend, Generator
from rtlipsync.face.geometry import blend_box, paste

from _common import machine


def networks(device: str, dtype: torch.dtype, random: bool):  # noqa: ANN201
    if not random:
        root = weights.check("v15")
        return (
            load_unet(root, "v15", dtype, device),
            load_vae(root, dtype, device),
            load_whisper_encoder(root, dtype, device),
        )
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    unet = unet_from_config(UNET_CONFIG).to(device, dtype).eval()
    vae = AutoencoderKL(**VAE_CONFIG).to(device, dtype).eval()
    whisper = WhisperModel(WhisperConfig(**WHISPER_TINY_CONFIG)).encoder.to(device, dtype).eval()
    return unet, vae, whisper


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(cv2.PSNR(np.stack(a).reshape(-1, 256, 3), np.stack(b).reshape(-1, 256, 3)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random", action="store_true", help="random weights, same networks")
    parser.add_argument(
        "--dtype",
        choices=["float16", "bfloat16"],
        help="the fast precision (default: float16 on a GPU; the CPU stays at float32)",
    )
    parser.add_argument("--json", type=str, help="also write the figures to this file")
    args = parser.parse_args()
    device = args.device
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    fast = getattr(torch, dtype)
    print(machine())
    if device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    # fp32 first: the reference for the parity figure, then the same networks at speed.
    unet, vae, encoder = networks(device, torch.float32, args.random)
    rng = np.random.default_rng(0)
    figures: dict[str, object] = {"device": device, "dtype": str(fast), "random": args.random}
    parity_latents = torch.from_numpy(rng.normal(size=(8, 8, 32, 32)).astype(np.float32))
    parity_windows = rng.normal(size=(8, 50, 384)).astype(np.float32)
    exact = Generator(unet, vae)(parity_latents, parity_windows)
    unet.to(fast)
    vae.to(fast)
    encoder.to(fast)
    generate = Generator(unet, vae)
    if fast != torch.float32:
        figures["psnr_db"] = round(psnr(generate(parity_latents, parity_windows), exact), 2)
        print(f"{dtype} vs float32 on the same inputs: PSNR {figures['psnr_db']} dB")
    per_batch = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        latents = torch.from_numpy(rng.normal(size=(batch, 8, 32, 32)).astype(np.float32))
        windows = rng.normal(size=(batch, 50, 384)).astype(np.float32)
        try:
            generate(latents, windows)  # warm-up (and cuDNN autotune)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                generate(latents, windows)
            sync(device)
        except torch.OutOfMemoryError:
            print(f"batch {batch:3d}: out of GPU memory")
            break
        fps = batch * args.repeats / (time.perf_counter() - t0)
        per_batch[batch] = round(fps, 1)
        print(f"batch {batch:3d}: {fps:8.1f} fps  -> {int(fps // 25)} sessions at 25 fps")
    figures["fps"] = per_batch
    # Paste-back: on the device (what serving does on a GPU) vs cv2 on the host, per frame.
    frame = rng.integers(0, 256, (768, 576, 3), dtype=np.uint8)
    box = (188, 250, 388, 470)
    mask = np.zeros((256, 256), np.uint8)
    mask[140:230, 40:216] = 255
    blend = DeviceBlend([frame], np.array([box]), mask[None], np.array([blend_box(box)]), device)
    batch = max(per_batch, default=1)
    latents = torch.from_numpy(rng.normal(size=(batch, 8, 32, 32)).astype(np.float32))
    windows = rng.normal(size=(batch, 50, 384)).astype(np.float32)
    targets = [(blend, 0)] * batch
    faces = generate(latents, windows)
    generate(latents, windows, targets)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        generate(latents, windows, targets)
    sync(device)
    fps = batch * args.repeats / (time.perf_counter() - t0)
    t0 = time.process_time()
    for face in faces:
        paste(frame, face, box, mask, blend_box(box))
    host_ms = 1000 * (time.process_time() - t0) / len(faces)
    figures["pasted_fps"] = round(fps, 1)
    figures["host_paste_ms"] = round(host_ms, 2)
    print(f"batch {batch:3d} pasted on the device into 576x768: {fps:8.1f} fps "
          f"(the CPU's paste instead: {host_ms:.2f} ms of CPU per frame)")  # fmt: skip
    # Time to first frame: the first Whisper block (8 frames + 80 ms of look-ahead) and one
    # batch of 8 through the UNet and the VAE.
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    features = AudioFeatures(encoder, extractor, device)
    audio = (rng.normal(size=16000) * 3000).astype(np.int16)
    sync(device)
    t0 = time.perf_counter()
    features.push(audio[:7040])
    ready = features.frames_ready()
    windows = np.stack([features.window(f) for f in range(min(ready, 8))])
    latents = torch.from_numpy(rng.normal(size=(len(windows), 8, 32, 32)).astype(np.float32))
    generate(latents, windows)
    sync(device)
    figures["first_frame_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    print(f"time to first frame (features + one batch of {len(windows)}): "
          f"{figures['first_frame_ms']} ms")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
