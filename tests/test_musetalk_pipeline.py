"""MuseTalk's frame pipeline on tiny random-weight networks of the same architecture:
latent layout, one UNet pass, decode, and paste-back geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the musetalk extra is not installed")
diffusers = pytest.importorskip("diffusers")

from rtlipsync.engines.musetalk.pipeline import (  # noqa: E402
    Generator,
    encode_crops,
    masked,
    to_tensor,
)
from rtlipsync.face.geometry import blend_box, crop_face, paste  # noqa: E402


@pytest.fixture(scope="module")
def nets():  # noqa: ANN201
    from tiny_musetalk import tiny_nets

    n = tiny_nets()
    return n.unet, n.vae


def faces(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)


def test_latents_are_masked_then_reference(nets) -> None:  # noqa: ANN001
    _, vae = nets
    crops = faces(2)
    x = to_tensor(crops)
    assert x.shape == (2, 3, 256, 256) and -1 <= x.min() and x.max() <= 1
    assert float(x[0, 0, 5, 7]) == pytest.approx(crops[0, 5, 7, 2] / 127.5 - 1)  # R from BGR
    hidden = masked(x)
    assert (hidden[:, :, 128:] == -1).all() and torch.equal(hidden[:, :, :128], x[:, :, :128])
    latents = encode_crops(vae, crops)
    assert latents.shape == (2, 8, 32, 32)
    with torch.no_grad():
        scale = vae.config.scaling_factor
        ref = vae.encode(x).latent_dist.mode() * scale
        mask = vae.encode(hidden).latent_dist.mode() * scale
    torch.testing.assert_close(latents[:, :4], mask)
    torch.testing.assert_close(latents[:, 4:], ref)
    assert torch.equal(encode_crops(vae, crops), latents)  # deterministic (the mean, not a sample)


def test_one_pass_to_faces(nets) -> None:  # noqa: ANN001
    unet, vae = nets
    generate = Generator(unet, vae)
    latents = encode_crops(vae, faces(3))
    windows = np.random.default_rng(1).normal(size=(3, 50, 384)).astype(np.float32)
    out = np.stack(generate(latents, windows))
    assert out.shape == (3, 256, 256, 3) and out.dtype == np.uint8
    assert np.array_equal(out, generate(latents, windows))
    single = generate(latents[1:2], windows[1:2])
    assert np.abs(single[0].astype(int) - out[1].astype(int)).max() <= 1  # batching changes nothing
    other = generate(latents[1:2], windows[2:3])
    assert not np.array_equal(single, other)  # the audio matters


def test_paste_back_geometry() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 320, 3), dtype=np.uint8)
    box = (100, 80, 200, 220)
    mask = np.zeros((256, 256), np.uint8)
    mask[128:] = 255  # the lower half of the blend box, hard-edged for the test
    face = np.full((256, 256, 3), 7, np.uint8)
    out = paste(frame, face, box, mask, blend_box(box))
    bx1, by1, bx2, by2 = blend_box(box)
    yc = (by1 + by2) // 2
    assert np.array_equal(out[: yc - 2], frame[: yc - 2])  # above the blend line: untouched
    assert (out[yc + 2 : 220, 102:198] == 7).all()  # inside the box, below the line: the face
    assert np.array_equal(out[:, :bx1], frame[:, :bx1])  # outside the blend box: untouched
    assert np.array_equal(out[230:], frame[230:])  # below the crop box: the frame (mask × box)
    edge = (0, 150, 90, 290)  # a box at the frame's corner: its blend box leaves the frame
    assert blend_box(edge)[0] < 0 and blend_box(edge)[3] > 300
    cut = paste(frame, face, edge, mask, blend_box(edge))
    assert cut.shape == frame.shape and (cut[250:290, 2:88] == 7).all()


def test_paste_on_the_device_matches_paste() -> None:
    """`DeviceBlend` is the GPU's paste-back: same result as `paste` (to a level or two of
    cv2's fixed-point resize), clipped the same way at the frame's edges."""
    from rtlipsync.engines.musetalk.pipeline import DeviceBlend

    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (300, 320, 3), dtype=np.uint8) for _ in range(2)]
    boxes = np.array([(100, 80, 200, 220), (0, 150, 90, 290)])  # the second leaves the frame
    mask_boxes = np.array([blend_box(tuple(b)) for b in boxes])
    masks = np.stack([cv2.GaussianBlur(faces(1, seed=s)[0, :, :, 0], (31, 31), 0) for s in (1, 2)])
    blend = DeviceBlend(frames, boxes, masks, mask_boxes, "cpu")
    for source in (0, 1):
        face = faces(1, seed=7 + source)[0]
        expected = paste(
            frames[source], face, tuple(boxes[source]), masks[source], mask_boxes[source]
        )
        tensor = torch.from_numpy(face).permute(2, 0, 1).float()
        region = blend.region(source)
        got = blend.paste(tensor, source).numpy()
        assert got.shape == expected[region].shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected[region].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.2
        assert not np.array_equal(got, frames[source][region])  # the face is in
    assert blend.region(1)[1].start == 0  # clipped at the frame's left edge


def test_rows_with_a_target_come_back_pasted(nets) -> None:  # noqa: ANN001
    from rtlipsync.engines.musetalk.pipeline import DeviceBlend

    unet, vae = nets
    generate = Generator(unet, vae)
    latents = encode_crops(vae, faces(2))
    windows = np.random.default_rng(1).normal(size=(2, 50, 384)).astype(np.float32)
    face0, face1 = generate(latents, windows)
    frame = np.random.default_rng(2).integers(0, 256, (300, 320, 3), dtype=np.uint8)
    box = (100, 80, 200, 220)
    mask = np.full((256, 256), 255, np.uint8)
    blend = DeviceBlend([frame], np.array([box]), mask[None], np.array([blend_box(box)]), "cpu")
    same, region = generate(latents, windows, [None, (blend, 0)])  # a face and a pasted row
    assert np.array_equal(same, face0)
    expected = paste(frame, face1, box, mask, blend_box(box))[blend.region(0)]
    assert np.abs(region.astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_against_float32(dtype: str) -> None:
    """The GPU runs MuseTalk in half precision: the same inputs through the same networks in
    float32 and in ``dtype`` give faces within 35 dB PSNR (the goal for the real weights)."""
    import copy

    from tiny_musetalk import tiny_unet, tiny_vae

    torch.manual_seed(2)
    unet, vae = tiny_unet(), tiny_vae()
    half = Generator(
        copy.deepcopy(unet).to(getattr(torch, dtype)), copy.deepcopy(vae).to(getattr(torch, dtype))
    )
    exact = Generator(unet, vae)
    latents = encode_crops(vae, faces(4, seed=3))
    windows = np.random.default_rng(4).normal(size=(4, 50, 384)).astype(np.float32)
    a = np.stack(exact(latents, windows)).reshape(-1, 256, 3)
    b = np.stack(half(latents, windows)).reshape(-1, 256, 3)
    value = cv2.PSNR(a, b)
    print(f"{dtype} vs float32: PSNR {value:.1f} dB")
    assert 35 <= value < 100  # close, and really computed in the lower precision


def test_crop_face() -> None:
    frame = np.zeros((300, 320, 3), np.uint8)
    frame[80:220, 100:200] = 200
    crop = crop_face(frame, (100, 80, 200, 220))
    assert crop.shape == (256, 256, 3) and crop.min() >= 190


def test_sessions_share_batches(nets) -> None:  # noqa: ANN001
    import threading

    from rtlipsync.engines.musetalk.pipeline import Batcher

    unet, vae = nets
    generate = Generator(unet, vae)
    batcher = Batcher(generate, max_batch=16, wait=0.2)
    rng = np.random.default_rng(5)
    jobs = [
        (encode_crops(vae, faces(2, seed=i)), rng.normal(size=(2, 50, 384)).astype(np.float32))
        for i in range(3)
    ]
    results: dict[int, np.ndarray] = {}

    def session(i: int) -> None:
        results[i] = np.stack(batcher(*jobs[i]))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert batcher.batches == 1  # three sessions' frames, one forward pass
    for i, (latents, windows) in enumerate(jobs):
        alone = np.stack(generate(latents, windows))
        assert np.abs(results[i].astype(int) - alone.astype(int)).max() <= 1  # its own rows
    # a failure reaches the caller
    broken = Batcher(lambda latents, windows, targets: 1 / 0, wait=0)
    with pytest.raises(ZeroDivisionError):
        broken(*jobs[0])
    assert broken._leading is False  # and nothing is left stuck


def test_out_of_gpu_memory_halves_the_batch_then_says_so() -> None:
    from rtlipsync.engines.musetalk.pipeline import Batcher

    calls: list[int] = []

    def generate(latents, windows, targets):  # noqa: ANN001, ANN202 - a GPU that fits 2 frames
        calls.append(len(windows))
        if len(windows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return np.stack([np.full((256, 256, 3), int(w[0, 0]), np.uint8) for w in windows])

    batcher = Batcher(generate, max_batch=8, wait=0)
    windows = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 50, 384), np.float32)
    out = batcher(torch.zeros(6, 8, 32, 32), windows)
    assert [int(face[0, 0, 0]) for face in out] == [0, 1, 2, 3, 4, 5]  # every frame, in order
    assert batcher.max_batch <= 3 and calls[0] == 6
    tiny = Batcher(
        lambda latents, windows, targets: (_ for _ in ()).throw(torch.OutOfMemoryError()), wait=0
    )
    with pytest.raises(RuntimeError, match="out of memory even for one MuseTalk frame"):
        tiny(torch.zeros(1, 8, 32, 32), np.zeros((1, 50, 384), np.float32))


def test_the_constant_time_embedding_changes_nothing() -> None:
    from rtlipsync.engines.musetalk.features import positional_encoding
    from rtlipsync.engines.musetalk.pipeline import ConstantEmbedding

    from tiny_musetalk import tiny_unet

    torch.manual_seed(1)
    unet = tiny_unet()
    sample = torch.randn(3, 8, 32, 32)
    audio = torch.randn(3, 50, 384) + positional_encoding()
    with torch.no_grad():
        before = unet(sample, torch.zeros(1, dtype=torch.long), encoder_hidden_states=audio).sample
    Generator(unet, diffusers.AutoencoderKL(block_out_channels=(32,), latent_channels=4))
    assert isinstance(unet.time_embedding, ConstantEmbedding)
    with torch.no_grad():
        after = unet(sample, torch.zeros(1, dtype=torch.long), encoder_hidden_states=audio).sample
    # Float rounding only: the constant is computed once, for one sample, and broadcast (a
    # wrong embedding moves the output by ~0.1).
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
