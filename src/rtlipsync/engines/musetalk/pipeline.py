"""MuseTalk's per-frame work: crop → latents (once per avatar frame), then per spoken frame
UNet at t = 0 → VAE decode → paste back into the avatar's own frame.

MuseTalk is not a diffusion sampler: one UNet pass at timestep 0 inpaints the lower half of
the face latent from the audio window, so the time embedding is a constant and the whole
step is two network calls per batch.

On a GPU the paste-back happens there too (`DeviceBlend`): the avatar's blend regions and
weights stay on the device, and only each frame's blend region comes back to the host, in
one transfer per batch, instead of every face being resized and blended on the CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from rtlipsync.engines.musetalk.features import positional_encoding
from rtlipsync.face.geometry import CROP, Region, face_placement, paste_mask, paste_region

log = logging.getLogger(__name__)

LATENT = CROP // 8


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(B, 256, 256, 3) BGR uint8 → (B, 3, 256, 256) RGB in [-1, 1]."""
    rgb = np.ascontiguousarray(np.asarray(crops)[..., ::-1])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def masked(images: torch.Tensor) -> torch.Tensor:
    """The lower half blacked out (-1), as MuseTalk was trained: the part to inpaint."""
    out = images.clone()
    out[:, :, CROP // 2 :, :] = -1.0
    return out


@torch.no_grad()
def encode_crops(
    vae: torch.nn.Module, crops: np.ndarray, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, 8, 32, 32) latents: [masked, reference] on channels, each scaled.

    By default the posterior's mean: the same avatar always gives the same latents. With a
    ``generator`` they are drawn from the posterior, as the official code does (unseeded
    there; seeded here, so a parity check can be repeated).
    """
    param = next(vae.parameters())
    images = to_tensor(crops).to(param.device, param.dtype)
    scale = vae.config.scaling_factor

    def encode(x: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(x).latent_dist
        drawn = posterior.mode() if generator is None else posterior.sample(generator)
        return drawn * scale

    return torch.cat([encode(masked(images)), encode(images)], dim=1)


class ConstantEmbedding(torch.nn.Module):
    """Stands in for the UNet's time MLP: at timestep 0 its output never changes."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.value


class DeviceBlend:
    """One avatar's paste-back on the device (the same arithmetic as `paste`).

    Each source frame's blend region and its weights are uploaded on first use and kept (as
    bytes: ~140 MB for a 10 s loop with 250-pixel faces), so a spoken frame costs one resize
    of the generated face and one blend on the device. Sessions on the same avatar share it.
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        boxes: np.ndarray,
        masks: np.ndarray,
        mask_boxes: np.ndarray,
        device: torch.device | str,
    ) -> None:
        self.frames, self.boxes, self.masks, self.mask_boxes = frames, boxes, masks, mask_boxes
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def region(self, source: int) -> Region | None:
        """Where the blended region of ``source`` goes in its frame."""
        return paste_region(self.frames[source].shape, self.mask_boxes[source])

    def paste(self, face: torch.Tensor, source: int) -> torch.Tensor:
        """(3, 256, 256) BGR face in 0..255 (float, on the device) → the (h, w, 3) uint8
        blend region of frame ``source`` with the face pasted in."""
        region = self.region(source)
        if region is None:
            raise ValueError(f"frame {source}'s blend box lies outside the frame")
        with self._lock:
            if source not in self._cache:
                pixels = np.ascontiguousarray(self.frames[source][region])
                mask = paste_mask(self.masks[source], self.mask_boxes[source], region)
                self._cache[source] = (
                    torch.from_numpy(pixels).to(self.device),
                    torch.from_numpy(mask).to(self.device),
                )
            pixels, mask = self._cache[source]
        original = pixels.float()
        weight = mask.float() / 255.0  # the same float32 weights as `paste`
        large = original.clone()
        placement = face_placement(self.boxes[source], region)
        if placement is not None:
            x1, y1, x2, y2 = (int(v) for v in self.boxes[source])
            resized = torch.nn.functional.interpolate(
                face[None].float(), size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
            )[0].permute(1, 2, 0)
            into, part = placement
            large[into] = resized[part]
        return torch.round(weight * large + (1 - weight) * original).to(torch.uint8)


Target = tuple[DeviceBlend, int]  # paste this row's face into that avatar's frame, there


class Generator:
    """UNet + VAE decode for batches of (latent, audio window) pairs.

    The UNet's time embedding is computed once (MuseTalk always runs at t = 0) and put in
    place of its time MLP; on a GPU the audio goes up through pinned memory, and rows with a
    paste target come back as their blended frame region rather than as a face.
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module) -> None:
        self.unet = unet
        self.vae = vae
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.pe = positional_encoding().to(self.device, self.dtype)
        self.timestep = torch.zeros(1, device=self.device, dtype=torch.long)
        if not isinstance(unet.time_embedding, ConstantEmbedding):
            with torch.no_grad():
                t_emb = unet.time_proj(self.timestep).to(self.dtype)
                unet.time_embedding = ConstantEmbedding(unet.time_embedding(t_emb))
        self._host: torch.Tensor | None = None  # pinned landing buffer for the results

    @torch.no_grad()
    def __call__(
        self,
        latents: torch.Tensor,
        windows: np.ndarray,
        targets: Sequence[Target | None] | None = None,
    ) -> list[np.ndarray]:
        """(B, 8, 32, 32) latents and (B, 50, 384) audio windows → per row, the (256, 256, 3)
        BGR face, or with a target, that frame's blended region (h, w, 3)."""
        audio = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.device.type == "cuda":
            audio = audio.pin_memory()
        audio = audio.to(self.device, self.dtype, non_blocking=True)
        sample = latents.to(self.device, self.dtype)
        pred = self.unet(sample, self.timestep, encoder_hidden_states=audio + self.pe).sample
        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode(pred.to(vae_dtype) / self.vae.config.scaling_factor).sample
        # 0..255 BGR, rounded as a uint8 face would be
        faces = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().flip(1)
        rows = []
        for i in range(len(faces)):
            target = targets[i] if targets is not None else None
            if target is None:
                rows.append(faces[i].permute(1, 2, 0).to(torch.uint8))
            else:
                rows.append(target[0].paste(faces[i], target[1]))
        return self._download(rows)

    def _download(self, rows: list[torch.Tensor]) -> list[np.ndarray]:
        """Every row to the host in one transfer (through a reused pinned buffer on a GPU)."""
        flat = torch.cat([r.reshape(-1) for r in rows])
        if self.device.type == "cuda":
            if self._host is None or self._host.numel() < flat.numel():
                self._host = torch.empty(flat.numel(), dtype=torch.uint8, pin_memory=True)
            host = self._host[: flat.numel()]
            host.copy_(flat)
            data = host.numpy().copy()  # the buffer is reused by the next batch
        else:
            data = flat.numpy()
        out, start = [], 0
        for r in rows:
            out.append(data[start : start + r.numel()].reshape(r.shape))
            start += r.numel()
        return out


class Batcher:
    """One batch for every session's ready frames: many sessions, one model, one GPU queue.

    Streams call it from their own threads. The first caller becomes the leader: it waits
    ``wait`` seconds for other sessions' frames to join, runs batches of up to ``max_batch``
    until nothing is pending, and hands each caller its own rows. No thread lives on between
    calls, and a failure reaches every caller whose frames were in the failed batch.
    """

    def __init__(self, generate: Generator, max_batch: int = 32, wait: float = 0.003) -> None:
        self.generate = generate
        self.max_batch = max_batch
        self.wait = wait
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        self._leading = False
        self.batches = 0  # forward passes run (for tests and logs)

    def __call__(
        self,
        latents: torch.Tensor,
        windows: np.ndarray,
        targets: Sequence[Target | None] | None = None,
    ) -> list[np.ndarray]:
        """Each row's face (or blended region, see `Generator`), in order."""
        targets = list(targets) if targets is not None else [None] * len(windows)
        job = _Job(latents, np.asarray(windows), targets)
        with self._lock:
            self._pending.append(job)
            lead = not self._leading
            self._leading = True
        if lead:
            if self.wait > 0:
                time.sleep(self.wait)
            self._drain()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch: list[_Job] = []
                rows = 0
                while self._pending and (
                    not batch or rows + len(self._pending[0].windows) <= self.max_batch
                ):
                    batch.append(self._pending.pop(0))
                    rows += len(batch[-1].windows)
                if not batch:
                    self._leading = False
                    return
            try:
                out = self._run(
                    torch.cat([j.latents for j in batch]),
                    np.concatenate([j.windows for j in batch]),
                    [t for j in batch for t in j.targets],
                )
                start = 0
                for j in batch:
                    j.result = out[start : start + len(j.windows)]
                    start += len(j.windows)
            except Exception as exc:  # noqa: BLE001 - handed to each caller
                for j in batch:
                    j.error = exc
            for j in batch:
                j.done.set()

    def _run(
        self, latents: torch.Tensor, windows: np.ndarray, targets: list[Target | None]
    ) -> list[np.ndarray]:
        """One forward pass; out of GPU memory, the batch is halved (and the limit lowered)
        until it fits, and a single frame that does not fit is a clear error."""
        try:
            out = list(self.generate(latents, windows, targets))
            self.batches += 1
            return out
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(windows) == 1:
                raise RuntimeError(
                    "the GPU is out of memory even for one MuseTalk frame: free the GPU or "
                    "use a smaller model precision"
                ) from None
            half = len(windows) // 2
            self.max_batch = max(1, min(self.max_batch, half))
            log.warning("GPU out of memory: MuseTalk batches now at most %d", self.max_batch)
            first = self._run(latents[:half], windows[:half], targets[:half])
            return first + self._run(latents[half:], windows[half:], targets[half:])


class _Job:
    def __init__(
        self, latents: torch.Tensor, windows: np.ndarray, targets: list[Target | None]
    ) -> None:
        self.latents, self.windows, self.targets = latents, windows, targets
        self.result: list[np.ndarray] | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
