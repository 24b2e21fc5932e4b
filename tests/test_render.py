"""`rtlipsync render` end to end through the CLI: outputs, the seed YAML, and bad input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from rtlipsync.cli import main
from rtlipsync.face.avatar import default_avatar_source
from rtlipsync.media.frames import FPS

from conftest import media, write_wav


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {
            "vcodec": v.codec_context.name,
            "acodec": a.codec_context.name,
            "fps": float(v.average_rate),
            "size": (v.width, v.height),
            "frames": sum(1 for _ in c.decode(v)),
        }
    with av.open(str(path)) as c:
        info["audio_s"] = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    return info


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_render_text_makes_h264_aac_at_25fps(tmp_path: Path, capsys, default_avatar) -> None:
    out = tmp_path / "hello.mp4"
    code, stdout, _ = run(["render", "--text", "Hello, how are you today?", "-o", str(out)], capsys)
    assert code == 0 and "wrote" in stdout
    info = probe(out)
    assert (info["vcodec"], info["acodec"], info["fps"]) == ("h264", "aac", 25.0)
    assert info["size"] == (512, 512)
    assert abs(info["frames"] / FPS - info["audio_s"]) <= 1 / FPS  # within one frame


def test_render_audio_file_duration_matches(tmp_path: Path, capsys, speech) -> None:
    wav = write_wav(tmp_path / "speech.wav", speech.pcm, speech.sample_rate)
    out = tmp_path / "speech.mp4"
    code, _, _ = run(["render", "--avatar", "default", "--audio", str(wav), "-o", str(out)], capsys)
    assert code == 0
    info = probe(out)
    assert abs(info["audio_s"] - speech.duration) < 0.05
    assert abs(info["frames"] / FPS - speech.duration) <= 1 / FPS


def test_inference_config_renders_one_mp4_per_task(tmp_path: Path, capsys, speech) -> None:
    import cv2

    # Two "videos": a still image and a folder of frames, as MuseTalk's test.yaml allows.
    face = cv2.imread(str(default_avatar_source()))
    still = tmp_path / "face.png"
    cv2.imwrite(str(still), face)
    short = write_wav(tmp_path / "short.wav", speech.pcm[: speech.sample_rate], speech.sample_rate)
    config = tmp_path / "test.yaml"
    config.write_text(
        f"task_0:\n  video_path: {still}\n  audio_path: {short}\n"
        f"task_1:\n  video_path: face.png\n  audio_path: short.wav\n  bbox_shift: -7\n"
    )
    out_dir = tmp_path / "results"
    code, stdout, _ = run(["render", "--inference-config", str(config), "-o", str(out_dir)], capsys)
    assert code == 0
    outputs = sorted(out_dir.glob("*.mp4"))
    # MuseTalk's VIDEO_AUDIO naming, made unique where two tasks would share a name.
    assert [p.name for p in outputs] == ["face_short.mp4", "face_short_task_1.mp4"]
    assert stdout.count("wrote") == 2
    assert all(abs(probe(p)["frames"] - 25) <= 1 for p in outputs)


def test_shared_media_render(tmp_path: Path, capsys) -> None:
    audio = media("yongen.wav")
    video = media("yongen.mp4")
    config = tmp_path / "test.yaml"
    config.write_text(f"- video_path: {video}\n  audio_path: {audio}\n")
    code, _, err = run(["render", "--inference-config", str(config), "-o", str(tmp_path)], capsys)
    assert code == 0, err
    info = probe(tmp_path / "yongen_yongen.mp4")
    assert info["size"] == (704, 1216)
    assert abs(info["frames"] / FPS - info["audio_s"]) <= 1 / FPS


def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    empty = write_wav(tmp / "empty.wav", np.zeros(0, np.int16), 16000)
    noface = tmp / "wall.png"
    import cv2

    cv2.imwrite(str(noface), np.full((200, 200, 3), 200, np.uint8))
    doc = tmp / "notes.docx"
    doc.write_bytes(b"PK\x03\x04 not media")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("task_0: {video_path: nowhere.mp4, audio_path: nowhere.wav}\n")
    out = str(tmp / "out.mp4")
    return [
        (["render", "--audio", str(tmp / "missing.wav"), "-o", out], "not found"),
        (["render", "--audio", str(corrupt), "-o", out], "cannot read audio"),
        (["render", "--audio", str(empty), "-o", out], "empty"),
        (["render", "--audio", str(doc), "-o", out], "cannot read audio"),
        (["render", "--text", "  ", "-o", out], "empty"),
        (["render", "--text", "hi", "-o", str(tmp / "out.avi")], "must end in .mp4"),
        (["render", "--text", "hi", "-o", str(tmp / "no" / "dir.mp4")], "does not exist"),
        (["render", "--avatar", "nobody", "--text", "hi", "-o", out], "no avatar named"),
        (["render", "--inference-config", str(bad_yaml), "-o", str(tmp / "res")], "not found"),
        (["avatar", "prepare", "wall", str(noface)], "no face found"),
        (["avatar", "prepare", "doc", str(doc)], "unsupported source type"),
        (["eval", "sync", str(corrupt)], "cannot read"),
        (["eval", "sync", str(tmp / "nowhere.mp4")], "video not found"),
    ]


def test_bad_input_exits_2_with_one_line_and_no_output(
    tmp_path: Path, capsys, default_avatar
) -> None:
    for argv, message in _bad_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        code, stdout, stderr = run(argv, capsys)
        assert code == 2, argv
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            argv,
            stderr,
        )
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, argv  # nothing left behind


def test_cli_help_and_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "avatar" in capsys.readouterr().out
    assert main(["render", "-o", "x.mp4"]) == 2
    assert "give --audio" in capsys.readouterr().err
