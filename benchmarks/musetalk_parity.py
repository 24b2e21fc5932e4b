"""MuseTalk parity: the project's engine against the official TMElyralab/MuseTalk code, stage by
stage, on the same random weights written in the official formats.

    python benchmarks/musetalk_parity.py --official PATH_TO_A_CHECKOUT_OF_TMElyralab/MuseTalk
    python benchmarks/musetalk_parity.py --official PATH --version v10

Both codes get the same models folder (every file the download brings, synthesized at full
size in its published serialisation), the same avatar frames and crop boxes (the official
landmark code needs mmpose; the project's boxes, made by MuseTalk's rule, are given to both),
and the same speech, longer than 30 s so that frames past 10 s and past 30 s are compared.
Each version runs as the official scripts run it: v1.5 with its UNet, crops reaching
``extra_margin`` below the chin and the "jaw" mask; v1.0 with its UNet, crops that stop at
the chin and the "raw" mask.
Printed per stage, as PSNR (dB) of the project's result against the official one:

- audio windows: every frame's (50, 384) Whisper window, live ("stream") and offline
  ("segment"); for floats the peak is the official tensor's largest magnitude;
- latents: the avatar frames' [masked, reference] crop latents (posterior means: the official
  draws an unseeded sample, so its preprocessing and VAE are compared at the mean);
- UNet output and decoded face, for the chosen frames, each code from its own inputs;
- mask: blend weights (largest difference in 1/255 steps, and PSNR);
- final frame: over the blend region.

The official code needs torch, diffusers, transformers, torchvision, librosa and einops; its
own CUDA defaults run on the CPU here. Goal: decoded faces >= 40 dB on every compared frame,
mask weights within 2/255, final frames >= 40 dB.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from _common import machine  # noqa: E402

SR = 16000


def psnr(ours: np.ndarray, official: np.ndarray, peak: float | None = None) -> float:
    """PSNR of ``ours`` against ``official`` (uint8: peak 255; floats: the largest magnitude)."""
    a, b = np.asarray(ours, np.float64), np.asarray(official, np.float64)
    if peak is None:
        peak = 255.0 if np.asarray(official).dtype == np.uint8 else float(np.abs(b).max())
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def speech(official: Path, seconds: float) -> np.ndarray:
    """The official repository's own speech clips, end to end, to ``seconds`` (int16, 16 kHz)."""
    from rtlipsync.media.audio import load_audio, to_int16

    parts = []
    for name in ("eng.wav", "sun.wav", "yongen.wav"):
        path = official / "data" / "audio" / name
        if path.exists():
            parts.append(to_int16(load_audio(str(path), SR)[0]))
    if not parts:
        raise SystemExit(f"no speech under {official}/data/audio: is it a MuseTalk checkout?")
    pcm = np.concatenate(parts)
    pcm = np.tile(pcm, int(np.ceil(seconds * SR / len(pcm))))
    return pcm[: int(seconds * SR)]


def official_features(whisper_dir: Path, wav: Path) -> np.ndarray:
    from musetalk.utils.audio_processor import AudioProcessor
    from transformers import WhisperModel

    processor = AudioProcessor(feature_extractor_path=str(whisper_dir))
    whisper = WhisperModel.from_pretrained(str(whisper_dir)).eval()
    features, length = processor.get_audio_feature(str(wav), weight_dtype=torch.float32)
    with torch.no_grad():
        chunks = processor.get_whisper_chunk(
            features, "cpu", torch.float32, whisper, length, fps=25,
            audio_padding_length_left=2, audio_padding_length_right=2,
        )  # fmt: skip
    return chunks.numpy()


def our_features(nets, pcm: np.ndarray, block_frames: int | None) -> np.ndarray:  # noqa: ANN001
    from rtlipsync.engines.musetalk.features import AudioFeatures

    features = AudioFeatures(nets.encoder, nets.extractor, "cpu", block_frames)
    features.push(pcm)
    features.end()
    # The official code drops a trailing part-frame; so do the compared windows.
    return np.stack([features.window(f) for f in range(len(pcm) * 25 // SR)])


class LandmarkParse(torch.nn.Module):
    """The parse both codes get: a random BiSeNet labels a face with one class almost
    everywhere, which leaves both masks empty and proves nothing, so face-mesh landmarks of
    the image the parser is given label skin, nose, lips and mouth (as one-hot scores). Each
    code still resizes into the parser, builds its mode's mask and resamples it its own way."""

    MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def __init__(self) -> None:
        super().__init__()
        from rtlipsync.face.landmarks import FaceLandmarker

        self.landmarker = FaceLandmarker()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where callers look for the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from rtlipsync.face import landmarks as lm

        rgb = ((x[0].cpu() * self.STD + self.MEAN).clamp(0, 1) * 255).round().byte()
        bgr = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[..., ::-1])
        labels = np.zeros(bgr.shape[:2], np.uint8)
        points = self.landmarker.detect(bgr)
        if points is not None:

            def fill(ids: list[int], label: int) -> None:
                cv2.fillPoly(labels, [np.round(points[ids]).astype(np.int32)], label)

            fill(lm.FACE_OVAL, 1)
            fill([168, 98, 97, 2, 326, 327], 10)  # the nose, bridge to nostrils
            fill(lm.UPPER_OUTER + lm.UPPER_INNER[::-1], 12)
            fill(lm.LOWER_OUTER + lm.LOWER_INNER[::-1], 13)
            fill(lm.UPPER_INNER + lm.LOWER_INNER[::-1], 11)
        scores = np.eye(19, dtype=np.float32)[labels].transpose(2, 0, 1)
        return torch.from_numpy(scores)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a MuseTalk checkout")
    parser.add_argument("--video", type=Path, help="avatar video (default: its data/video/sun.mp4)")
    parser.add_argument("--avatar-frames", type=int, default=24, help="frames of the video used")
    parser.add_argument("--seconds", type=float, default=34.0, help="speech length (> 30 s)")
    parser.add_argument(
        "--frames",
        default="0,1,120,249,251,400,600,747,749,752,800,-1",
        help="frames compared through the networks (-1: the last)",
    )
    parser.add_argument("--work", type=Path, help="keep the synthesized files here")
    parser.add_argument("--version", choices=("v15", "v10"), default="v15", help="MuseTalk version")
    args = parser.parse_args()
    official = args.official.resolve()
    if not (official / "musetalk" / "utils" / "audio_processor.py").exists():
        raise SystemExit(f"{official} is not a checkout of TMElyralab/MuseTalk")
    work = (args.work or Path(tempfile.mkdtemp(prefix="musetalk-parity-"))).resolve()
    print(machine())
    version = args.version
    print(f"official code: {official}; work folder: {work}; MuseTalk {version}")

    from official_musetalk import write_official_models
    from rtlipsync.speech.asr import wav_bytes

    models = work / "models"
    if not (models / "musetalkV15" / "unet.pth").exists():
        t = time.perf_counter()
        write_official_models(models, v10_file=True)  # each version's file at its size
        print(f"synthesized the official models folder in {time.perf_counter() - t:.0f} s")
    os.environ["RTLIPSYNC_HOME"] = str(work / "home")
    (work / "home" / "models").mkdir(parents=True, exist_ok=True)
    link = work / "home" / "models" / "musetalk"
    if not link.exists():
        link.symlink_to(models)
    pcm = speech(official, args.seconds)
    wav = work / "speech.wav"
    wav.write_bytes(wav_bytes(pcm, SR))

    # The avatar: the project prepares it (crop boxes by MuseTalk's rule); both codes use
    # its frames and boxes.
    from rtlipsync.engines.musetalk.engine import (
        MuseTalkNets,
        crop_boxes,
        crop_latents,
        parse_masks,
    )
    from rtlipsync.engines.musetalk.model import UNET_FILES
    from rtlipsync.engines.musetalk.parsing import MASK_MODES
    from rtlipsync.face.avatar import PrepareOptions, blend_masks, load_avatar, prepare_avatar
    from rtlipsync.face.geometry import crop_face, paste

    video = args.video or official / "data" / "video" / "sun.mp4"
    source = work / "avatar-frames"
    if not source.exists():
        source.mkdir()
        capture = cv2.VideoCapture(str(video))
        for i in range(args.avatar_frames):
            ok, frame = capture.read()
            if not ok:
                break
            cv2.imwrite(str(source / f"{i:06d}.png"), frame)
    prepare_avatar("parity", source, PrepareOptions(max_size=4096), progress=False)
    avatar = load_avatar("parity")
    sources = sorted(source.glob("*.png"))
    kept = [psnr(avatar.frames[i], cv2.imread(str(p))) for i, p in enumerate(sources)]
    print(f"avatar frames against the source: min {min(kept):.1f} dB over {len(kept)} frames")

    nets = MuseTalkNets.load(models, version, "cpu")
    mask_mode = MASK_MODES[version]
    boxes = crop_boxes(avatar, version)  # both codes crop here
    nets.parser = LandmarkParse()
    total = len(pcm) * 25 // SR
    picks = sorted({f if f >= 0 else total + f for f in map(int, args.frames.split(","))})
    picks = [f for f in picks if f < total]

    # The official code, from its own folder layout (it reads ./models/...).
    sys.path.insert(0, str(official))
    here = os.getcwd()
    os.chdir(work)
    try:
        t = time.perf_counter()
        theirs = official_features(models / "whisper", wav)
        print(f"official audio windows: {theirs.shape} in {time.perf_counter() - t:.1f} s")
        from musetalk.utils.blending import get_image_blending, get_image_prepare_material
        from musetalk.utils.face_parsing import FaceParsing
        from musetalk.utils.utils import load_all_model

        folder, unet_file = UNET_FILES[version]
        vae, unet, pe = load_all_model(
            unet_model_path=str(models / folder / unet_file),
            vae_type="sd-vae",
            unet_config=str(models / folder / "musetalk.json"),
            device=torch.device("cpu"),
        )
        # As the official scripts make it: v1.5 with the cheek widths its arguments give,
        # v1.0 with the class defaults.
        fp = FaceParsing(90, 90) if version == "v15" else FaceParsing()
        fp.net = LandmarkParse()
    finally:
        os.chdir(here)

    print("\nstage: audio windows (PSNR per frame; min by span)")
    spans = {"0-10 s": (0, 250), "10-30 s": (250, 750), "30 s-end": (750, total)}
    ours_by_mode = {}
    for mode, block in (("stream", 8), ("segment", None)):
        t = time.perf_counter()
        ours = our_features(nets, pcm, block)
        ours_by_mode[mode] = ours
        per = [psnr(ours[f], theirs[f], float(np.abs(theirs).max())) for f in range(total)]
        cells = "  ".join(f"{k} {min(per[a:b]):6.1f}" for k, (a, b) in spans.items() if b > a)
        print(f"  {mode:<8} {cells}   ({time.perf_counter() - t:.0f} s)")

    print("\nstage: latents, masks (every avatar frame)")
    parse_masks(avatar, nets)
    masks, mask_boxes = blend_masks(avatar, mask_mode)
    our_latents = crop_latents(avatar, nets, "mean", boxes=version)
    lat, diff_max, mask_psnr = [], 0, []
    official_masks, official_latents = {}, {}
    with torch.no_grad():
        for i, frame in enumerate(avatar.frames):
            box = [int(v) for v in boxes[i]]
            crop = crop_face(frame, tuple(box))
            parts = [vae.preprocess_img(crop, half_mask=h) for h in (True, False)]
            mean = torch.cat([vae.vae.encode(x).latent_dist.mean for x in parts], 1)
            official_latents[i] = mean * vae.scaling_factor
            lat.append(psnr(our_latents[i], official_latents[i][0].numpy()))
            mask, crop_box = get_image_prepare_material(frame, box, fp=fp, mode=mask_mode)
            official_masks[i] = (mask, crop_box)
            bx1, by1, bx2, by2 = (int(v) for v in mask_boxes[i])
            ours_mask = cv2.resize(masks[i], (bx2 - bx1, by2 - by1))
            if ours_mask.shape != mask.shape or list(crop_box) != [bx1, by1, bx2, by2]:
                print(f"  frame {i}: blend boxes differ {crop_box} vs {(bx1, by1, bx2, by2)}")
                continue
            diff_max = max(diff_max, int(np.abs(ours_mask.astype(int) - mask.astype(int)).max()))
            mask_psnr.append(psnr(ours_mask, mask))
    print(f"  latents      min {min(lat):6.1f} dB")
    print(f"  mask         min {min(mask_psnr):6.1f} dB, largest difference {diff_max}/255")

    print(f"\nstage: networks and paste, frames {picks}")
    timesteps = torch.tensor([0])
    rows = []
    for f in picks:
        i = int(avatar.loop[f % len(avatar.loop)])
        box = tuple(int(v) for v in boxes[i])
        frame = avatar.frames[i]
        with torch.no_grad():
            latent = torch.from_numpy(our_latents[i])[None]
            # Official: its own windows and its own latents (mean, as above).
            audio = pe(torch.from_numpy(theirs[f])[None])
            unet_out = unet.model(official_latents[i], timesteps, encoder_hidden_states=audio)
            their_unet = unet_out.sample
            their_face = vae.decode_latents(their_unet)[0]
            resized = cv2.resize(their_face.astype(np.uint8), (box[2] - box[0], box[3] - box[1]))
            mask, crop_box = official_masks[i]
            their_frame = get_image_blending(frame, resized, list(box), mask, crop_box)
            row = [f]
            for mode in ("stream", "segment"):
                window = ours_by_mode[mode][f][None]
                audio = torch.from_numpy(window) + nets.generate.pe
                step = nets.generate.timestep
                our_unet = nets.unet(latent, step, encoder_hidden_states=audio).sample
                our_face = nets.generate(latent, window)[0]
                our_frame = paste(frame, our_face, box, masks[i], tuple(mask_boxes[i]))
                bx1, by1, bx2, by2 = crop_box
                ys = slice(max(by1, 0), min(by2, frame.shape[0]))
                xs = slice(max(bx1, 0), min(bx2, frame.shape[1]))
                row += [
                    psnr(our_unet.numpy(), their_unet.numpy()),
                    psnr(our_face, their_face),
                    psnr(our_frame[ys, xs], their_frame[ys, xs]),
                ]
        rows.append(row)
        print(
            f"  frame {f:5d} ({f / 25:5.1f} s)  stream: unet {row[1]:5.1f} face {row[2]:5.1f} "
            f"final {row[3]:5.1f}   segment: unet {row[4]:5.1f} face {row[5]:5.1f} "
            f"final {row[6]:5.1f}"
        )
    table = np.array(rows)
    print(
        f"\nmin decoded face: stream {table[:, 2].min():.1f} dB, segment {table[:, 5].min():.1f} dB"
        f"; min final frame: stream {table[:, 3].min():.1f} dB, segment {table[:, 6].min():.1f} dB"
        f"; mask within {diff_max}/255  (goal: 40 dB, 40 dB, 2/255)"
    )


if __name__ == "__main__":
    main()
