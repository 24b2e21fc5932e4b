"""Face parsing for MuseTalk's blend masks: BiSeNet (19 CelebAMask classes) on ResNet18.

The network is the face-parsing BiSeNet MuseTalk ships weights for (``79999_iter.pth``): a
ResNet18 context path with attention refinement at 1/16 and 1/32, the 1/8 ResNet features
standing in for the spatial path, a feature-fusion module, and three heads of which only the
first is used. Module names follow the published checkpoint, so it loads strictly.

`jaw_mask` turns a parse into MuseTalk v1.5's "jaw" blend mask: skin widened downwards in the
middle of the face (a cone-and-bar dilation) and narrowed at the cheeks, nose excluded, mouth
and lips included; `raw_mask` is v1.0's (skin, mouth and lips as parsed). Then, as every
mask, it is limited to the crop box and the lower half of the blend box and feathered, at the
blend box's full resolution. Each step resamples as the official code does (PIL's bilinear
into the parser, the parse kept at 512, PIL's bicubic back to the blend box), so the weights
are the official ones. Class ids: 1 skin, 10 nose, 11 mouth, 12/13 lips.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rtlipsync.engines.musetalk.model import WeightsError, check_keys, read_state_dict
from rtlipsync.face.geometry import feather_blend_mask

SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP = 1, 10, 11, 12, 13
PARSE_SIZE = 512
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """torchvision's ResNet18 layout (its weights load into it), returning 1/8, 1/16, 1/32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        up32 = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(up32, feat16.shape[2:], mode="nearest"))
        up16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(up16, feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, classes: int = 19) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, classes)
        # Training-time auxiliary heads: in the checkpoint, never run here.
        self.conv_out16 = Head(128, 64, classes)
        self.conv_out32 = Head(128, 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised RGB → (B, classes, H, W) logits."""
        feat8, context8 = self.cp(x)
        out = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def load_parser(models: Path, device: str | torch.device = "cpu") -> BiSeNet:
    """BiSeNet from ``face-parse-bisent/``: the backbone from torchvision's ResNet18 file
    (its classifier skipped), then the whole network strictly from ``79999_iter.pth``."""
    folder = models / "face-parse-bisent"
    net = BiSeNet(19)
    backbone = read_state_dict(folder / "resnet18-5c106cde.pth")
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    result = net.cp.resnet.load_state_dict(backbone, strict=False)
    check_keys(
        "torchvision's ResNet18",
        folder / "resnet18-5c106cde.pth",
        result.missing_keys,
        result.unexpected_keys,
    )
    state = read_state_dict(folder / "79999_iter.pth")
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{folder / '79999_iter.pth'} does not fit BiSeNet: {exc}") from exc
    check_keys(
        "the face-parsing BiSeNet",
        folder / "79999_iter.pth",
        result.missing_keys,
        result.unexpected_keys,
    )
    return net.to(device).eval()


@torch.no_grad()
def parse(net: BiSeNet, image: np.ndarray) -> np.ndarray:
    """Class ids (512, 512) of a BGR face image, parsed at 512 x 512 (the official code's PIL
    bilinear resize into the network; the parse stays at 512)."""
    from PIL import Image

    rgb = Image.fromarray(np.ascontiguousarray(image[..., ::-1]))
    rgb = np.asarray(rgb.resize((PARSE_SIZE, PARSE_SIZE), Image.BILINEAR))
    x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    param = next(net.parameters())
    tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(param.device)
    return net(tensor).argmax(1)[0].to(torch.uint8).cpu().numpy()


def _jaw_kernel() -> np.ndarray:
    """33 x 33: a cone widening downwards (rows 10-20, widths 1-21) over a 21-wide bar."""
    kernel = np.zeros((33, 33), np.uint8)
    for i, row in enumerate(range(10, 21)):
        width = 1 + 2 * i
        kernel[row, 16 - width // 2 : 16 + width // 2 + 1] = 1
    kernel[21:33, 6:27] = 1
    return kernel


def jaw_mask(labels: np.ndarray, cheek_width: int = 90) -> np.ndarray:
    """MuseTalk v1.5's "jaw" mask (0/255) from a 512 x 512 parse of the blend box."""
    skin = (labels == SKIN).astype(np.uint8) * 255
    dilated = cv2.dilate(skin, _jaw_kernel())
    eroded = cv2.erode(dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
    mask = dilated.copy()
    centre = labels.shape[1] // 2
    # The official cheek rectangles are drawn with cv2.rectangle, which includes both ends:
    # columns 0..centre-w and centre+w..end are the eroded cheeks.
    mask[:, : centre - cheek_width + 1] = eroded[:, : centre - cheek_width + 1]
    mask[:, centre + cheek_width :] = eroded[:, centre + cheek_width :]
    mask[labels == NOSE] = 0
    mask[np.isin(labels, (MOUTH, UPPER_LIP, LOWER_LIP))] = 255
    return mask


def raw_mask(labels: np.ndarray) -> np.ndarray:
    """MuseTalk v1.0's "raw" mask (0/255): skin, mouth and lips as parsed."""
    return np.isin(labels, (SKIN, MOUTH, UPPER_LIP, LOWER_LIP)).astype(np.uint8) * 255


MASK_MODES = {"v15": "jaw", "v10": "raw"}  # each version's official parsing mode


def blend_mask_from_parse(
    labels: np.ndarray,
    box: tuple[int, int, int, int],
    mask_box: tuple[int, int, int, int],
    mode: str = "jaw",
) -> np.ndarray:
    """The blend mask (uint8, the blend box's full size) from a 512 x 512 parse of it."""
    from PIL import Image

    side = mask_box[2] - mask_box[0]
    raw = jaw_mask(labels) if mode == "jaw" else raw_mask(labels)
    raw = np.asarray(Image.fromarray(raw).resize((side, side), Image.BICUBIC))
    return feather_blend_mask(raw, box, mask_box)


def crop_blend_box(frame: np.ndarray, mask_box: tuple[int, int, int, int]) -> np.ndarray:
    """The blend box's pixels, black where it reaches outside the frame."""
    bx1, by1, bx2, by2 = mask_box
    h, w = frame.shape[:2]
    out = np.zeros((by2 - by1, bx2 - bx1, 3), np.uint8)
    cx1, cy1, cx2, cy2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
    if cx1 < cx2 and cy1 < cy2:
        out[cy1 - by1 : cy2 - by1, cx1 - bx1 : cx2 - bx1] = frame[cy1:cy2, cx1:cx2]
    return out
