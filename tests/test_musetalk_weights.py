"""MuseTalk's official files: the download's offline behaviour, and strict loading of
checkpoints synthesized here in the official format (random weights, official shapes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rtlipsync.engines.musetalk import weights
from rtlipsync.errors import InputError

torch = pytest.importorskip("torch", reason="the musetalk extra is not installed")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from rtlipsync.engines.musetalk.model import (  # noqa: E402
    UNET_CONFIG,
    WeightsError,
    load_unet,
    load_vae,
    load_whisper_encoder,
)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:  # noqa: ANN001
    """A models folder in the official layout, every network at its real size, random."""
    from official_musetalk import write_official_models

    root = write_official_models(tmp_path_factory.mktemp("models"))
    vae = torch.load(root / "sd-vae" / "diffusion_pytorch_model.bin", weights_only=True)
    assert any(".attentions.0.query." in k for k in vae)  # the published key names
    whisper = torch.load(root / "whisper" / "pytorch_model.bin", mmap=True, weights_only=True)
    assert "model.encoder.conv1.weight" in whisper and "proj_out.weight" in whisper
    return root


def test_the_config_is_the_official_file() -> None:
    assert len(json.dumps(UNET_CONFIG, indent=2) + "\n") == 748  # the published size


@pytest.mark.parametrize("version", ["v15", "v10"])
def test_official_unet_loads_strictly(official: Path, version: str) -> None:
    unet = load_unet(official, version)
    params = dict(unet.named_parameters())
    assert 845e6 < sum(p.numel() for p in params.values()) < 855e6  # ~850 M, 3.4 GB fp32
    assert params["conv_in.weight"].shape == (320, 8, 3, 3)
    assert params["conv_out.weight"].shape == (4, 320, 3, 3)
    to_k = [p for k, p in params.items() if k.endswith("attn2.to_k.weight")]
    assert to_k and all(p.shape[1] == 384 for p in to_k)
    assert params["down_blocks.0.attentions.0.proj_in.weight"].shape == (320, 320, 1, 1)
    saved = torch.load(official / "musetalkV15" / "unet.pth", mmap=True, weights_only=True)
    assert torch.equal(params["conv_in.weight"], saved["conv_in.weight"])  # the file's values


def test_a_wrong_unet_file_fails_clearly(official: Path, tmp_path: Path) -> None:
    bad = tmp_path / "models"
    (bad / "musetalkV15").mkdir(parents=True)
    config = (official / "musetalkV15" / "musetalk.json").read_text()
    (bad / "musetalkV15" / "musetalk.json").write_text(config)
    unet_file = bad / "musetalkV15" / "unet.pth"
    unet_file.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WeightsError, match="is not a PyTorch checkpoint"):
        load_unet(bad)
    state = torch.load(official / "musetalkV15" / "unet.pth", mmap=True, weights_only=True)
    partial = {k: v for k, v in state.items() if not k.startswith("up_blocks.3")}
    partial["module.extra"] = torch.zeros(1)
    torch.save(partial, unet_file)
    with pytest.raises(WeightsError, match=r"missing keys .*unexpected keys \['module.extra'\]"):
        load_unet(bad)
    del partial
    (bad / "musetalkV15" / "musetalk.json").write_text(
        json.dumps({**UNET_CONFIG, "cross_attention_dim": 768})
    )
    os.link(official / "musetalkV15" / "unet.pth", bad / "musetalkV15" / "unet2.pth")
    os.replace(bad / "musetalkV15" / "unet2.pth", unet_file)
    with pytest.raises(WeightsError, match="does not fit the MuseTalk UNet: size mismatch"):
        load_unet(bad)
    with pytest.raises(WeightsError, match="musetalk/musetalk.json is missing"):
        load_unet(bad, "v10")


def test_vae_and_whisper_load_strictly(official: Path, tmp_path: Path) -> None:
    vae = load_vae(official)
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == pytest.approx(0.18215)
    encoder = load_whisper_encoder(official)
    assert encoder.conv1.weight.shape == (384, 80, 3) and len(encoder.layers) == 4
    assert encoder.embed_positions.weight.shape == (1500, 384)
    broken = tmp_path / "models" / "whisper"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text((official / "whisper" / "config.json").read_text())
    state = torch.load(official / "whisper" / "pytorch_model.bin", weights_only=True)
    torch.save(
        {k: v for k, v in state.items() if "layers.3" not in k}, broken / "pytorch_model.bin"
    )
    with pytest.raises(WeightsError, match="is not whisper-tiny: .* missing keys"):
        load_whisper_encoder(broken.parent)


def test_download_offline_says_what_is_missing_and_where(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as exc:
        weights.download("v15", root=tmp_path)
    message = str(exc.value)
    assert "HF_HUB_OFFLINE" in message and str(tmp_path) in message
    assert (
        "musetalkV15/unet.pth <- https://huggingface.co/TMElyralab/MuseTalk/resolve/main/musetalkV15/unet.pth"
        in message
    )
    assert "resnet18-5c106cde.pth (46,827,520 bytes) <- https://download.pytorch.org" in message
    assert "musetalk/pytorch_model.bin" not in message  # v1.0 only
    assert not any(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(InputError, match="unknown MuseTalk version"):
        weights.download("v2", root=tmp_path)


def test_files_present_by_size(tmp_path: Path) -> None:
    config = weights.FILES[2]  # musetalk/musetalk.json, 748 bytes
    assert config.path == "musetalk/musetalk.json" and not weights.present(config, tmp_path)
    (tmp_path / "musetalk").mkdir()
    (tmp_path / "musetalk" / "musetalk.json").write_text("{}")
    assert not weights.present(config, tmp_path)  # a truncated file does not count
    (tmp_path / "musetalk" / "musetalk.json").write_text(json.dumps(UNET_CONFIG, indent=2) + "\n")
    assert weights.present(config, tmp_path)


def test_known_hashes_are_checked(tmp_path: Path) -> None:
    unet = next(f for f in weights.FILES if f.path == "musetalkV15/unet.pth")
    assert unet.sha256 == "7ebf6c98c181"
    fake = tmp_path / "unet.pth"
    fake.write_bytes(b"not the weights")
    assert not weights.verify(unet, fake)
    config = next(f for f in weights.FILES if f.path == "sd-vae/config.json")
    assert weights.verify(config, fake)  # no hash known: size only


def test_render_runs_on_the_official_layout(official: Path, tmp_path: Path, speech) -> None:  # noqa: ANN001
    """What a user does after `models download musetalk`: the command line renders with every
    official file (the legacy face-parsing files included) at full size."""
    import subprocess
    import sys

    import av

    from conftest import write_wav

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "musetalk").symlink_to(official)
    assert weights.missing("v15", official) == []  # sizes as published, parser included
    wav = write_wav(tmp_path / "hi.wav", speech.pcm[: speech.sample_rate // 2], speech.sample_rate)
    out = tmp_path / "out.mp4"
    env = {**os.environ, "RTLIPSYNC_HOME": str(home)}
    command = [sys.executable, "-m", "rtlipsync.cli", "-q", "render", "--avatar", "default"]
    command += ["--audio", str(wav), "--engine", "musetalk", "--device", "cpu", "-o", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout and "13 frames" in done.stdout
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 13
    # The parsed (BiSeNet) blend masks were made from the legacy files and kept.
    assert (home / "avatars" / "default" / "musetalk" / "masks-jaw.npz").exists()


def test_serve_runs_on_the_official_layout(official: Path, tmp_path: Path, default_avatar) -> None:  # noqa: ANN001
    """`rtlipsync serve --engine musetalk` on the official files at full size: a WebSocket
    client asks the avatar to speak and gets frames whose mouth MuseTalk made (random weights
    make it noise, so it plainly differs from the idle face) while the forehead stays."""
    import asyncio
    import subprocess
    import sys
    import time

    import httpx
    import numpy as np
    import websockets

    from official_musetalk import write_parsing
    from rtlipsync.transport.websocket import decode_frame

    from conftest import free_port

    home = tmp_path / "home"
    models = home / "models" / "musetalk"
    models.mkdir(parents=True)
    for part in official.iterdir():  # the official files, but a parser that labels skin
        if part.name != "face-parse-bisent":
            (models / part.name).symlink_to(part)
    write_parsing(models, skin=True)
    assert weights.missing("v15", models) == []
    port = free_port()
    env = {**os.environ, "RTLIPSYNC_HOME": str(home)}
    command = [sys.executable, "-m", "rtlipsync.cli", "serve", "--engine", "musetalk"]
    command += ["--device", "cpu", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    x1, y1, x2, y2 = (int(v) for v in default_avatar.boxes[0])

    async def scenario() -> None:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240  # loading 3.4 GB of UNet and the rest
        async with httpx.AsyncClient(base_url=base) as http:
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the server did not come up"
                try:
                    if (await http.get("/")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(1.0)
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "session"
            idle = None
            while idle is None:
                message = await ws.recv()
                if isinstance(message, bytes):
                    idle = decode_frame(message)[1].astype(np.int16)
            await ws.send(json.dumps({"type": "say", "text": "Hello."}))
            spoken = []
            deadline = time.monotonic() + 300  # the CPU runs the full UNet slowly
            while len(spoken) < 8 and time.monotonic() < deadline:
                message = await asyncio.wait_for(ws.recv(), timeout=120)
                if isinstance(message, bytes):
                    _, image, audio = decode_frame(message)
                    if np.abs(audio.astype(np.int32)).max() > 1000:  # a speaking frame
                        spoken.append(image.astype(np.int16))
            assert len(spoken) == 8, "no speaking frames came"
            lower = slice((y1 + y2) // 2, y2)
            made = [np.abs(im[lower, x1:x2] - idle[lower, x1:x2]).mean() > 8 for im in spoken]
            assert sum(made) >= 4, made  # MuseTalk's mouths (a few may fade in)
            top = slice(0, max(y1 - 8, 1))  # above the crop nothing is pasted
            assert all(np.abs(im[top] - idle[top]).mean() < 2 for im in spoken)

    try:
        asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
