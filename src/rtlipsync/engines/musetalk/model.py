"""MuseTalk's networks, loaded strictly from the official files.

- UNet: diffusers' ``UNet2DConditionModel`` built from ``musetalk.json`` (Stable Diffusion 1.x
  geometry with 8 input channels — the masked and the reference latent — and 384-wide cross
  attention on Whisper features), then the official state dict, whose keys are plain diffusers
  names. Any missing, unexpected or misshapen key is an error, not a silently random layer.
- VAE: ``AutoencoderKL`` from the sd-vae-ft-mse folder (diffusers maps its legacy attention
  names); the latent scale is the config's, 0.18215 for this VAE.
- Audio: the encoder of ``WhisperModel`` from the whisper-tiny folder.

The model is built on the meta device and the weights are assigned memory-mapped, so loading
the 3.4 GB UNet costs no second copy and no random initialisation.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rtlipsync.errors import InputError

# musetalk.json as published (v1.0; v1.5's is reported identical). Written as indent-2 JSON
# with a trailing newline it is byte-for-byte the official 748-byte file.
UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}
UNET_FILES = {"v15": ("musetalkV15", "unet.pth"), "v10": ("musetalk", "pytorch_model.bin")}
# The published configs of the other two networks (stabilityai/sd-vae-ft-mse's config.json,
# openai/whisper-tiny's sizes): enough to build them at their official size without the
# files, as the benchmark's --random and the tests do.
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
WHISPER_TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_ffn_dim": 1536,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


class WeightsError(InputError):
    """A weights file is missing, unreadable, or not the network it should be."""


def unet_from_config(config: dict[str, Any], device: str | torch.device = "cpu"):  # noqa: ANN201
    """The UNet the config describes, with uninitialised weights on ``device`` ("meta": none)."""
    from diffusers import UNet2DConditionModel

    if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise WeightsError(f"not a UNet2DConditionModel config: {config.get('_class_name')}")
    with torch.device(device):
        return UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path} is missing: run `rtlipsync models download musetalk`")
    try:
        # Newer files are zip archives, read lazily (mmap); some published ones (the face-
        # parsing BiSeNet and torchvision's ResNet18) use torch's legacy serialisation,
        # which cannot be mapped and is read whole. Both are loaded as tensors only.
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}); download it again"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def check_keys(what: str, path: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise WeightsError(
            f"{path} is not {what}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )


def load_unet(  # noqa: ANN201
    models: Path,
    version: str = "v15",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """The official UNet of ``version`` from a models folder in the official layout."""
    if version not in UNET_FILES:
        raise WeightsError(f"unknown MuseTalk version {version!r}: use v15 or v10")
    folder, name = UNET_FILES[version]
    config_path = models / folder / "musetalk.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            f"{config_path} is missing: run `rtlipsync models download musetalk`"
        ) from None
    except ValueError as exc:
        raise WeightsError(f"{config_path} is not JSON: {exc}") from exc
    path = models / folder / name
    state = read_state_dict(path)
    unet = unet_from_config(config, "meta")
    try:
        result = unet.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise WeightsError(f"{path} does not fit the MuseTalk UNet: {first}") from exc
    check_keys("a MuseTalk UNet", path, result.missing_keys, result.unexpected_keys)
    return unet.to(device=device, dtype=dtype).eval()


def load_vae(  # noqa: ANN201
    models: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """sd-vae-ft-mse from ``models/sd-vae``."""
    from diffusers import AutoencoderKL

    folder = models / "sd-vae"
    try:
        vae, info = AutoencoderKL.from_pretrained(
            folder,
            output_loading_info=True,
            use_safetensors=(folder / "diffusion_pytorch_model.safetensors").exists(),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot load the VAE from {folder}: {exc}") from exc
    check_keys("sd-vae-ft-mse", folder, info["missing_keys"], info["unexpected_keys"])
    if info.get("mismatched_keys"):
        raise WeightsError(f"{folder}: misshapen keys {info['mismatched_keys'][:3]}")
    return vae.to(device=device, dtype=dtype).eval()


def load_whisper_encoder(  # noqa: ANN201
    models: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """The encoder of whisper-tiny from ``models/whisper`` (the decoder is never used)."""
    from transformers import WhisperModel

    folder = models / "whisper"
    try:
        model, info = WhisperModel.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot load Whisper from {folder}: {exc}") from exc
    missing = [k for k in info["missing_keys"] if k.startswith("encoder.")]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(("decoder.", "proj_out"))]
    check_keys("whisper-tiny", folder, missing, unexpected)
    return model.encoder.to(device=device, dtype=dtype).eval()
