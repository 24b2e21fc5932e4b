"""The realism measures: lips against a real person (ground truth) and bilabial closures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtlipsync.cli import main
from rtlipsync.errors import InputError
from rtlipsync.eval.lips import OpeningCurve, compare, opening_curve

from conftest import media


def curve(values: np.ndarray, fps: float = 25.0, start: float = 0.0) -> OpeningCurve:
    return OpeningCurve(start + np.arange(len(values)) / fps, values.astype(float))


def test_compare_scores_what_it_should() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(400) / 25
    real = np.clip(np.sin(2 * np.pi * 2.3 * t) + 0.3 * rng.normal(size=len(t)), 0, None)
    same = compare(curve(real), curve(real))
    assert same.r == pytest.approx(1.0) and same.closed_agreement == 1.0
    assert same.best_lag_ms == 0
    # A render 80 ms late: worse at lag 0, found again at +80 ms.
    late = compare(curve(np.concatenate([np.zeros(2), real[:-2]])), curve(real))
    assert late.r < 0.9 and late.best_lag_ms == 80 and late.best_r > 0.95
    # The truth at 30 fps is put on the render's 25 fps frame times.
    t30 = np.arange(480) / 30
    real30 = np.clip(np.sin(2 * np.pi * 2.3 * t30), 0, None)
    assert compare(curve(np.clip(np.sin(2 * np.pi * 2.3 * t), 0, None)), curve(real30, 30)).r > 0.99
    # A mouth that never shuts where the real one does.
    never = compare(curve(real + 5.0), curve(real))
    assert never.closed_agreement == 0.0
    with pytest.raises(InputError, match="too few frames"):
        compare(curve(real[:5]), curve(real[:5]))


def test_a_video_against_itself(tmp_path) -> None:  # noqa: ANN001
    from rtlipsync.render import render

    out = render("default", tmp_path / "a.mp4", text="Bob and Pam may buy a map.", progress=False)
    c = opening_curve(out.path)
    assert len(c.times) == out.frames and np.nanmax(c.values) > 0.02
    code = main(["-q", "eval", "lips", str(out.path), "--truth", str(out.path), "--json"])
    assert code == 0


def test_ground_truth_on_a_real_clip(capsys) -> None:  # noqa: ANN001
    clip = media("talking/video-retalking-2.mp4")
    assert main(["-q", "eval", "lips", "--truth", str(clip), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["clips"]["video-retalking-2.mp4"]
    assert report["frames"] > 100
    # A loudness-driven mouth scored 0.15 here; articulation from the sound does better.
    assert report["r"] > 0.3 and report["closed_agreement"] > 0.5, report
    assert result["median"]["r"] == report["r"]


def test_bilabials_cli(tmp_path, capsys) -> None:  # noqa: ANN001
    sentences = tmp_path / "s.txt"
    sentences.write_text("Maybe Bob will bring a map.\n\nPam bought a plum pie.\n")
    assert main(["-q", "eval", "bilabials", "--sentences", str(sentences), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in result["text"]["sentences"]] == [
        "Maybe Bob will bring a map.",
        "Pam bought a plum pie.",
    ]
    assert result["text"]["total"] >= 8
    assert result["text"]["share"] >= 0.9 and result["audio"]["share"] >= 0.75, result
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["-q", "eval", "bilabials", "--sentences", str(empty)]) == 2
    assert "holds no sentences" in capsys.readouterr().err


def test_reverse_is_a_footage_split(tmp_path, capsys) -> None:  # noqa: ANN001
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert main(["-q", "eval", "lips", "--reverse", "--truth", str(clip)]) == 2
    assert "give it with --footage" in capsys.readouterr().err
