"""MuseTalk's per-frame work: crop → latents (once per avatar frame), then per spoken frame
UNet at t = 0 → VAE decode → paste back into the avatar's own frame.

MuseTalk is not a diffusion sampler: one UNet pass at timestep 0 inpaints the lower half of
the face latent from the audio window, so the time embedding is a constant and the whole
step is two network calls per batch.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from rtlipsync.engines.musetalk.features import positional_encoding

CROP = 256  # MuseTalk generates faces at 256 x 256
LATENT = CROP // 8


def crop_face(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The face crop MuseTalk works on: the box, stretched to 256 x 256 (Lanczos)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(frame[y1:y2, x1:x2], (CROP, CROP), interpolation=cv2.INTER_LANCZOS4)


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
def encode_crops(vae: torch.nn.Module, crops: np.ndarray) -> torch.Tensor:
    """(B, 8, 32, 32) latents: [masked, reference] on channels, each scaled VAE means.

    The mean (``mode``) rather than a sample: the same avatar always gives the same latents.
    """
    param = next(vae.parameters())
    images = to_tensor(crops).to(param.device, param.dtype)
    scale = vae.config.scaling_factor

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x).latent_dist.mode() * scale

    return torch.cat([encode(masked(images)), encode(images)], dim=1)


class Generator:
    """UNet + VAE decode for batches of (latent, audio window) pairs."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module) -> None:
        self.unet = unet
        self.vae = vae
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.pe = positional_encoding().to(self.device, self.dtype)
        self.timestep = torch.zeros(1, device=self.device, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, windows: np.ndarray) -> np.ndarray:
        """(B, 8, 32, 32) latents and (B, 50, 384) audio windows → (B, 256, 256, 3) BGR."""
        audio = torch.as_tensor(np.asarray(windows), device=self.device, dtype=self.dtype)
        sample = latents.to(self.device, self.dtype)
        pred = self.unet(sample, self.timestep, encoder_hidden_states=audio + self.pe).sample
        vae_dtype = next(self.vae.parameters()).dtype
        image = self.vae.decode(pred.to(vae_dtype) / self.vae.config.scaling_factor).sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        out = (image.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return np.ascontiguousarray(out[..., ::-1])


def paste(
    frame: np.ndarray,
    face: np.ndarray,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    mask_box: tuple[int, int, int, int],
) -> np.ndarray:
    """``frame`` with the generated 256² ``face`` resized into ``box`` and blended through
    ``mask`` (stretched over ``mask_box``, which may reach outside the frame: clipped)."""
    out = frame.copy()
    x1, y1, x2, y2 = (int(v) for v in box)
    large = frame.copy()
    large[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    bx1, by1, bx2, by2 = (int(v) for v in mask_box)
    weight = cv2.resize(mask, (bx2 - bx1, by2 - by1)).astype(np.float32) / 255.0
    h, w = frame.shape[:2]
    cx1, cy1, cx2, cy2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
    if cx1 >= cx2 or cy1 >= cy2:
        return out
    m = weight[cy1 - by1 : cy2 - by1, cx1 - bx1 : cx2 - bx1, None]
    region = (slice(cy1, cy2), slice(cx1, cx2))
    blended = m * large[region].astype(np.float32) + (1 - m) * frame[region].astype(np.float32)
    out[region] = np.round(blended).astype(np.uint8)
    return out
