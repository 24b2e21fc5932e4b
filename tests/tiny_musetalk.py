"""MuseTalk's networks shrunk to CPU size, with random weights: the same block types, the
same 8-channel latent at 32 x 32, the same 384-wide audio attention, and the real
whisper-tiny encoder shape. For tests and for benchmarks whose cost does not depend on the
weights."""

from __future__ import annotations

import diffusers
import torch
import transformers

from rtlipsync.engines.musetalk.engine import MuseTalkEngine, MuseTalkNets
from rtlipsync.engines.musetalk.model import WHISPER_TINY_CONFIG


def tiny_unet() -> diffusers.UNet2DConditionModel:
    return diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=384, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()  # fmt: skip


def tiny_vae() -> diffusers.AutoencoderKL:
    return diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=256,
    ).eval()  # fmt: skip


def whisper_tiny() -> tuple[torch.nn.Module, transformers.WhisperFeatureExtractor]:
    """whisper-tiny's encoder (random) and its log-mel extractor."""
    model = transformers.WhisperModel(transformers.WhisperConfig(**WHISPER_TINY_CONFIG))
    return model.encoder.eval(), transformers.WhisperFeatureExtractor(feature_size=80)


def tiny_nets(seed: int = 0, device_blend: bool | None = None) -> MuseTalkNets:
    torch.manual_seed(seed)
    unet, vae = tiny_unet(), tiny_vae()
    return MuseTalkNets(unet, vae, *whisper_tiny(), "v15", device_blend=device_blend)


def tiny_engine(batch_size: int = 8, device_blend: bool | None = None) -> MuseTalkEngine:
    return MuseTalkEngine(tiny_nets(device_blend=device_blend), batch_size=batch_size)
