"""MuseTalk's official models folder, synthesized: every file the download brings, at its real
size, in the serialisation it is published in, with random weights.

For the tests that load the official layout and run the engine on it, and for the parity
benchmark, which runs the official code on the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rtlipsync.engines.musetalk.model import (
    UNET_CONFIG,
    VAE_CONFIG,
    WHISPER_TINY_CONFIG,
    unet_from_config,
)
from rtlipsync.engines.musetalk.parsing import BiSeNet, ResNet18
from rtlipsync.engines.musetalk.weights import FILES

# The 2022 sd-vae-ft-mse checkpoint names the mid-block attention the old way.
_LEGACY_VAE = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def write_unet(root: Path, v10_file: bool = False) -> None:
    """``musetalkV15/`` and ``musetalk/``: the config as published and one random UNet.

    The v1.0 file holds the same tensors under its own name: a hard link (no second 3.4 GB)
    unless ``v10_file``, which writes it as a file of its own at the published size, so the
    download's size check sees v1.0 complete too.
    """
    unet = unet_from_config(UNET_CONFIG)
    for folder in ("musetalkV15", "musetalk"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "musetalk.json").write_text(json.dumps(UNET_CONFIG, indent=2) + "\n")
    torch.save(unet.state_dict(), root / "musetalkV15" / "unet.pth")
    v10 = root / "musetalk" / "pytorch_model.bin"
    if v10_file:
        torch.save(unet.state_dict(), v10)
        published = next(f.size for f in FILES if f.path == "musetalk/pytorch_model.bin")
        pad_zip(v10, published)
    else:
        os.link(root / "musetalkV15" / "unet.pth", v10)


def pad_zip(path: Path, size: int) -> None:
    """Make the zip checkpoint at ``path`` exactly ``size`` bytes with an archive comment.

    The published file was written by an older torch, whose records add a few kilobytes; a
    zip comment is the one place extra bytes are part of a valid archive.
    """
    with path.open("r+b") as f:
        f.seek(-22, os.SEEK_END)
        end = f.read(22)
        assert end[:4] == b"PK\x05\x06" and end[20:22] == b"\0\0", "no bare end record"
        extra = size - path.stat().st_size
        assert 0 <= extra <= 0xFFFF, f"cannot pad {path} by {extra} bytes"
        f.seek(-2, os.SEEK_END)
        f.write(extra.to_bytes(2, "little") + bytes(extra))


def write_vae(root: Path) -> None:
    """``sd-vae/``: the published 547-byte config and a ``.bin`` with the legacy key names."""
    from diffusers import AutoencoderKL

    folder = root / "sd-vae"
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in AutoencoderKL(**VAE_CONFIG).state_dict().items():
        for new, old in _LEGACY_VAE.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = value
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    config = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", **VAE_CONFIG}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_whisper(root: Path) -> None:
    """``whisper/``: openai/whisper-tiny is a whole speech-to-text model ("model.encoder.*",
    the decoder, "proj_out"), with its config and its log-mel settings."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    folder = root / "whisper"
    folder.mkdir(parents=True, exist_ok=True)
    model = WhisperForConditionalGeneration(WhisperConfig(**WHISPER_TINY_CONFIG))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


def write_parsing(root: Path, skin: bool = False) -> None:
    """``face-parse-bisent/``: both files in torch's legacy (pre-zip) serialisation, as the
    published 2017/2019 files are, at the published sizes.

    A random BiSeNet labels almost every pixel background, which leaves blend masks empty
    and nothing pasted; with ``skin`` its classifier labels every pixel skin instead, so
    the face MuseTalk makes shows in the frame.

    The 2017 backbone predates BatchNorm's ``num_batches_tracked`` and holds the classifier.
    The published pickles also carry details of their era (CUDA storage locations, long
    storage keys) a few kilobytes long; zeros after the last storage, which the legacy loader
    never reads, stand in for them so the download's size check sees complete files.
    """
    folder = root / "face-parse-bisent"
    folder.mkdir(parents=True, exist_ok=True)
    backbone = {k: v for k, v in ResNet18().state_dict().items() if "num_batches" not in k}
    backbone["fc.weight"] = torch.randn(1000, 512)
    backbone["fc.bias"] = torch.randn(1000)
    parser = BiSeNet(19)
    if skin:
        with torch.no_grad():  # features after a ReLU are >= 0: class 1 (skin) wins
            parser.conv_out.conv_out.weight.zero_()
            parser.conv_out.conv_out.weight[1] = 1.0
    files = {"resnet18-5c106cde.pth": backbone, "79999_iter.pth": parser.state_dict()}
    for name, state in files.items():
        path = folder / name
        torch.save(state, path, _use_new_zipfile_serialization=False)
        published = next(f.size for f in FILES if f.path == f"face-parse-bisent/{name}")
        assert published is not None and path.stat().st_size <= published
        with path.open("ab") as out:
            out.write(bytes(published - path.stat().st_size))


def write_official_models(
    root: Path, seed: int = 0, parsing: bool = True, v10_file: bool = False
) -> Path:
    """The whole folder under ``root`` (made if needed); returns ``root``. ``v10_file``: see
    `write_unet`."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    write_unet(root, v10_file)
    write_vae(root)
    write_whisper(root)
    if parsing:
        write_parsing(root)
    return root
