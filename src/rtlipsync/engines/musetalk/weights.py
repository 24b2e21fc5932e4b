"""The official MuseTalk files, in the official layout under ``<data root>/models/musetalk``.

The layout is MuseTalk's own ``models/`` folder, so a folder downloaded by its scripts can be
copied in as it is. Files come from the Hugging Face hub (resumable, with a progress bar, and
checked by the hub's own hashes) except the ResNet18 backbone, which PyTorch publishes on its
own server. Sizes are checked where the official listings give them. Offline, a download
fails at once with the list of what is missing and where to get each file by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rtlipsync.errors import InputError
from rtlipsync.paths import data_dir

VERSIONS = ("v15", "v10")
HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@dataclass(frozen=True)
class WeightFile:
    path: str  # in the official layout
    repo: str | None = None  # Hugging Face repository ...
    repo_path: str | None = None  # ... and the file's path in it
    url: str | None = None  # or a plain URL
    size: int | None = None  # bytes, where the official listing gives it
    versions: tuple[str, ...] = VERSIONS
    purpose: str = ""
    optional: bool = False  # used when present (face parsing; landmark masks otherwise)
    sha256: str = ""  # the start of the file's SHA-256, where a listing gives it

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        return f"{HUB}/{self.repo}/resolve/main/{self.repo_path}"


FILES = (
    WeightFile("musetalkV15/musetalk.json", "TMElyralab/MuseTalk", "musetalkV15/musetalk.json",
               versions=("v15",), purpose="UNet config (v1.5)"),
    WeightFile("musetalkV15/unet.pth", "TMElyralab/MuseTalk", "musetalkV15/unet.pth",
               versions=("v15",), purpose="UNet weights (v1.5)", sha256="7ebf6c98c181"),
    WeightFile("musetalk/musetalk.json", "TMElyralab/MuseTalk", "musetalk/musetalk.json",
               size=748, versions=("v10",), purpose="UNet config (v1.0)"),
    WeightFile("musetalk/pytorch_model.bin", "TMElyralab/MuseTalk", "musetalk/pytorch_model.bin",
               size=3_400_076_549, versions=("v10",), purpose="UNet weights (v1.0)",
               sha256="0ee7d5ea"),
    WeightFile("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json", size=547,
               purpose="VAE config"),
    WeightFile("sd-vae/diffusion_pytorch_model.bin", "stabilityai/sd-vae-ft-mse",
               "diffusion_pytorch_model.bin", purpose="VAE weights"),
    WeightFile("whisper/config.json", "openai/whisper-tiny", "config.json",
               purpose="audio encoder config"),
    WeightFile("whisper/pytorch_model.bin", "openai/whisper-tiny", "pytorch_model.bin",
               purpose="audio encoder weights"),
    WeightFile("whisper/preprocessor_config.json", "openai/whisper-tiny",
               "preprocessor_config.json", purpose="log-mel settings"),
    WeightFile("face-parse-bisent/79999_iter.pth", "ManyOtherFunctions/face-parse-bisent",
               "79999_iter.pth", size=53_289_463, purpose="face parsing (blend masks)",
               optional=True),
    WeightFile("face-parse-bisent/resnet18-5c106cde.pth",
               url="https://download.pytorch.org/models/resnet18-5c106cde.pth",
               size=46_827_520, purpose="face parsing backbone", optional=True),
)  # fmt: skip


def models_root() -> Path:
    return data_dir("models") / "musetalk"


def files_for(version: str) -> list[WeightFile]:
    if version not in (*VERSIONS, "all"):
        raise InputError(f"unknown MuseTalk version {version!r}: use v15, v10 or all")
    return [f for f in FILES if version == "all" or version in f.versions]


def present(f: WeightFile, root: Path | None = None) -> bool:
    path = (root or models_root()) / f.path
    return path.is_file() and (f.size is None or path.stat().st_size == f.size)


def missing(version: str = "v15", root: Path | None = None) -> list[WeightFile]:
    return [f for f in files_for(version) if not present(f, root)]


def check(version: str = "v15", root: Path | None = None) -> Path:
    """The models folder, or an error naming every missing file and where to get it."""
    root = root or models_root()
    gone = [f for f in missing(version, root) if not f.optional]
    if gone:
        raise InputError(_missing_message(gone, root, "MuseTalk's weights are not all here"))
    return root


def _missing_message(gone: list[WeightFile], root: Path, why: str) -> str:
    lines = [f"{why}. Missing under {root}:"]
    for f in gone:
        size = f" ({f.size:,} bytes)" if f.size else ""
        lines.append(f"  {f.path}{size} <- {f.source}")
    lines.append(
        "Run `rtlipsync models download musetalk` when online, or put the files there by hand."
    )
    return "\n".join(lines)


def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if ``url``'s host answers; else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def download(version: str = "v15", root: Path | None = None, progress: bool = True) -> Path:
    """Fetch what is missing (resuming partial files); returns the models folder."""
    root = root or models_root()
    gone = missing(version, root)
    if not gone:
        return root
    if os.environ.get("HF_HUB_OFFLINE") or (why := _reachable(HUB)) is not None:
        reason = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else why
        raise InputError(_missing_message(gone, root, f"cannot download ({reason})"))
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise InputError(
            'downloading needs the musetalk extra: pip install -e ".[musetalk]"'
        ) from None
    failed: list[WeightFile] = []
    for f in gone:
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if f.url:
                _fetch(f.url, target, progress)
            else:
                assert f.repo and f.repo_path
                # The hub keeps the file's path in its repo under local_dir, so local_dir is
                # the part of our path before it.
                local_dir = root / f.path[: len(f.path) - len(f.repo_path)]
                hf_hub_download(f.repo, f.repo_path, local_dir=local_dir)
        except Exception:  # noqa: BLE001 - network, hub and disk errors alike: reported below
            failed.append(f)
            continue
        if not present(f, root) or not verify(f, target):
            target.unlink(missing_ok=True)  # the wrong file: never leave it in place
            failed.append(f)
    if failed:
        raise InputError(_missing_message(failed, root, "some downloads failed"))
    return root


def _fetch(url: str, target: Path, progress: bool) -> None:
    """Download ``url`` to ``target`` through a .part file, resuming one left by a failure."""
    from tqdm import tqdm

    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 206:
            have = 0  # the server ignored the range: start over
        total = have + int(response.headers.get("Content-Length", 0))
        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=target.name,
                 disable=not progress) as bar,
        ):  # fmt: skip
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    shutil.move(part, target)


def verify(f: WeightFile, path: Path) -> bool:
    """True unless the file's SHA-256 is known (in part) and this file's differs."""
    if not f.sha256:
        return True
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 24):
            digest.update(block)
    return digest.hexdigest().startswith(f.sha256)


def status(root: Path | None = None) -> list[tuple[WeightFile, bool]]:
    root = root or models_root()
    return [(f, present(f, root)) for f in FILES]
