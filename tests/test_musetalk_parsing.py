"""Face parsing for blend masks: BiSeNet loads strictly from files in the published format
(sizes matching the published ones), and the jaw-mode mask follows MuseTalk v1.5's rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the musetalk extra is not installed")

from rtlipsync.engines.musetalk import weights  # noqa: E402
from rtlipsync.engines.musetalk.model import WeightsError  # noqa: E402
from rtlipsync.engines.musetalk.parsing import (  # noqa: E402
    LOWER_LIP,
    MOUTH,
    NOSE,
    SKIN,
    UPPER_LIP,
    blend_mask_from_parse,
    jaw_mask,
    load_parser,
    parse,
    raw_mask,
)


@pytest.fixture(scope="module")
def parse_files(tmp_path_factory) -> Path:  # noqa: ANN001
    from official_musetalk import write_parsing

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    write_parsing(root)
    return root


def test_the_files_use_the_published_serialisation(parse_files: Path) -> None:
    import zipfile

    for name in ("resnet18-5c106cde.pth", "79999_iter.pth"):
        path = parse_files / "face-parse-bisent" / name
        assert not zipfile.is_zipfile(path)
        assert path.read_bytes()[:2] == b"\x80\x02"  # a pickle protocol-2 header, as published


def test_the_files_have_the_published_sizes(parse_files: Path) -> None:
    for f in weights.FILES:
        if f.path.startswith("face-parse-bisent/"):
            assert (parse_files / f.path).stat().st_size == f.size, f.path
            assert weights.present(f, parse_files)  # the download's check passes


def test_parser_loads_strictly_and_parses(parse_files: Path, tmp_path: Path) -> None:
    net = load_parser(parse_files)
    state = net.state_dict()
    for key in ("cp.resnet.layer2.0.downsample.0.weight", "cp.arm16.conv_atten.weight",
                "ffm.convblk.conv.weight", "conv_out16.conv_out.weight"):  # fmt: skip
        assert key in state
    saved = torch.load(parse_files / "face-parse-bisent" / "79999_iter.pth", weights_only=True)
    assert torch.equal(state["conv_out.conv_out.weight"], saved["conv_out.conv_out.weight"])
    image = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    labels = parse(net, image)
    assert labels.shape == (512, 512) and labels.max() < 19  # the parse stays at 512
    bad = tmp_path / "face-parse-bisent"
    bad.mkdir()
    (bad / "resnet18-5c106cde.pth").write_bytes(
        (parse_files / "face-parse-bisent" / "resnet18-5c106cde.pth").read_bytes()
    )
    torch.save({k: v for k, v in saved.items() if not k.startswith("ffm.")}, bad / "79999_iter.pth")
    with pytest.raises(WeightsError, match="is not the face-parsing BiSeNet: .* missing keys"):
        load_parser(tmp_path)


def test_jaw_mask() -> None:
    labels = np.zeros((512, 512), np.uint8)
    labels[100:360, 120:392] = SKIN
    labels[180:260, 230:282] = NOSE
    labels[290:300, 200:312] = UPPER_LIP
    labels[300:310, 200:312] = MOUTH
    labels[310:322, 200:312] = LOWER_LIP
    mask = jaw_mask(labels)
    assert mask[295, 256] == 255 and mask[315, 256] == 255  # lips and mouth in
    assert mask[220, 256] == 0  # the nose out
    # The cone-and-bar dilation (OpenCV's, anchor at the kernel's centre) widens the skin in
    # the middle of the face, and the erosion takes it back at the cheeks.
    dilated_rows = np.nonzero(mask[:, 256])[0]
    assert dilated_rows.min() < 100 - 5  # beyond the parsed skin
    assert mask[95, 140] == 0  # not at the cheeks
    box = (120, 100, 392, 360)
    stored = blend_mask_from_parse(labels, box, (0, 0, 512, 512))
    assert stored.shape == (512, 512)  # the blend box's full size
    assert stored[:200].max() == 0 and stored[:240].max() < 10  # lower half (feathered edge)
    assert stored[310, 256] > 200  # the lips
    # The left cheek rectangle includes its last column (cv2.rectangle's ends are inclusive).
    strip = np.zeros((512, 512), np.uint8)
    strip[:, 150:180] = SKIN  # narrow enough for the cheek erosion to remove it all
    mask = jaw_mask(strip)
    assert mask[50, 256 - 90] == 0  # eroded: the cheek's last column
    assert mask[50, 256 - 89] == 255 and mask[50, 175] == 255  # dilated: the middle


def test_raw_mask_is_v10s_parse() -> None:
    labels = np.zeros((512, 512), np.uint8)
    labels[100:360, 120:392] = SKIN
    labels[180:260, 230:282] = NOSE
    labels[300:310, 200:312] = MOUTH
    mask = raw_mask(labels)
    assert mask[200, 150] == 255 and mask[305, 256] == 255  # skin and mouth
    assert mask[220, 256] == 0 and mask[50, 50] == 0  # the nose and the background out
    assert not np.array_equal(mask, jaw_mask(labels))
