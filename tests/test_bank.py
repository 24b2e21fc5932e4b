"""Serving from a bank keeps the lips in sync: a bank of known mouths (the CPU engine's own,
one per state), served to speech and measured with `rtlipsync eval sync`."""

from __future__ import annotations

from pathlib import Path

import cv2

from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.engines.cpu.engine import BankStream
from rtlipsync.eval.sync import measure_sync
from rtlipsync.face.avatar import Avatar, load_avatar, prepare_avatar
from rtlipsync.render import render

from conftest import write_wav
from reference_bank import bake_reference


def test_a_bank_served_session_stays_in_sync(
    default_avatar: Avatar, speech, tmp_path: Path
) -> None:  # noqa: ANN001
    source = tmp_path / "face.png"  # a copy of the default face: the shared one stays unbaked
    cv2.imwrite(str(source), default_avatar.frames[0])
    prepare_avatar("reference-bank", source, progress=False)
    avatar = load_avatar("reference-bank")
    bake_reference(avatar)
    assert isinstance(CpuEngine().open_stream(avatar), BankStream)
    wav = write_wav(tmp_path / "speech.wav", speech.pcm, speech.sample_rate)
    out = render("reference-bank", tmp_path / "bank.mp4", audio=wav, progress=False)
    report = measure_sync(out.path)
    assert report.frames_with_face == report.frames
    assert report.correlation >= 0.6 and abs(report.lag_ms) <= 40
    if report.silence_motion is not None:
        assert report.silence_motion <= 0.25 and report.silence_open <= 0.5
