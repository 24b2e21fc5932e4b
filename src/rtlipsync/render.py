"""Offline rendering: an avatar and some speech → an H.264/AAC mp4 at 25 fps.

It drives the same engine stream a live session uses, so what a render shows is what a session
would stream. Inputs are checked before any work starts, and the mp4 is written atomically, so
bad input costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from rtlipsync.engines.base import LipSyncEngine, render_speech
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.errors import InputError
from rtlipsync.face.avatar import PrepareOptions, load_avatar, prepare_avatar
from rtlipsync.media.audio import load_audio, resample, to_int16
from rtlipsync.media.frames import FPS, FRAME_SAMPLES, SAMPLE_RATE, Phoneme
from rtlipsync.media.video import Mp4Writer
from rtlipsync.speech.espeak import EspeakTTS

log = logging.getLogger(__name__)

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
AAC_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}


@dataclass
class RenderResult:
    path: Path
    frames: int
    audio_seconds: float

    @property
    def video_seconds(self) -> float:
        return self.frames / FPS


@dataclass
class _Speech:
    engine_pcm: np.ndarray  # int16 at SAMPLE_RATE for the engine
    out_audio: np.ndarray  # float32 at out_rate for the file
    out_rate: int
    phonemes: list[Phoneme]


def _speech_from_audio(path: str | Path, max_seconds: float | None = None) -> _Speech:
    samples, rate = load_audio(path, max_seconds=max_seconds)
    if np.max(np.abs(samples)) == 0:
        log.warning("audio %s is all silence: the mouth will stay closed", path)
    out_rate = rate if rate in AAC_RATES else 48_000
    out = resample(samples, rate, out_rate)
    return _Speech(to_int16(resample(samples, rate, SAMPLE_RATE)), out, out_rate, [])


def _speech_from_text(text: str, voice: str | None) -> _Speech:
    speech = EspeakTTS().synthesize(text, voice)
    out = speech.pcm.astype(np.float32) / 32768.0
    engine = speech.at_rate(SAMPLE_RATE)
    return _Speech(engine.pcm, out, speech.sample_rate, speech.phonemes)


def check_output(path: str | Path) -> Path:
    out = Path(path).expanduser()
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must end in .mp4, got {out.name!r}")
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    return out


def render(
    avatar: str,
    output: str | Path,
    audio: str | Path | None = None,
    text: str | None = None,
    voice: str | None = None,
    emotion: str | None = None,
    progress: bool = True,
    preset: str = "veryfast",
    on_progress: Callable[[int, int], None] | None = None,
    engine: LipSyncEngine | None = None,
    max_audio_seconds: float | None = None,
) -> RenderResult:
    """Render ``avatar`` saying ``audio`` (a file) or ``text`` (spoken offline) into ``output``
    with ``engine`` (the CPU engine by default); audio longer than ``max_audio_seconds`` is
    refused before anything is rendered."""
    if (audio is None) == (text is None):
        raise InputError("give exactly one of --audio FILE or --text TEXT")
    out = check_output(output)
    speech = (
        _speech_from_audio(audio, max_audio_seconds)
        if audio is not None
        else _speech_from_text(text or "", voice)
    )
    av = load_avatar(avatar)
    stream = (engine or CpuEngine()).open_stream(av)
    width, height = av.size
    n_frames = -(-len(speech.engine_pcm) // FRAME_SAMPLES)
    written = 0
    if preset not in X264_PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {', '.join(X264_PRESETS)}")
    with Mp4Writer(out, width, height, FPS, speech.out_rate, preset=preset) as writer:
        bar = tqdm(total=n_frames, desc=f"rendering {out.name}", unit="frame", disable=not progress)
        for frame in render_speech(
            stream, speech.engine_pcm, speech.phonemes, emotion, SAMPLE_RATE // 4
        ):
            writer.write_video(frame.image)
            a = round(written * speech.out_rate / FPS)
            b = round((written + 1) * speech.out_rate / FPS)
            writer.write_audio(speech.out_audio[a:b])
            written += 1
            bar.update(1)
            if on_progress is not None:
                on_progress(written, n_frames)
        bar.close()
    return RenderResult(out, written, len(speech.out_audio) / speech.out_rate)


def safe_name(stem: str) -> str:
    """``stem`` as an avatar or file name: letters, digits, '.', '_' and '-'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "avatar"
    return name[:64]


def load_inference_config(path: str | Path) -> list[dict[str, Any]]:
    """Read MuseTalk's ``configs/inference/test.yaml`` form: tasks of video, audio, bbox_shift.

    Accepts the official mapping (``task_0: {...}``) or a plain list. Every task is checked
    (files exist, fields valid) before anything is rendered.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"inference config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"inference config {path} is not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(f"task_{i}", t) for i, t in enumerate(data)]
    else:
        raise InputError(
            f"inference config {path} must hold tasks (task_0: {{video_path, audio_path}})"
        )
    tasks = []
    for name, task in items:
        if not isinstance(task, dict) or "video_path" not in task or "audio_path" not in task:
            raise InputError(f"{path}: task {name!r} needs video_path and audio_path")
        resolved = {}
        for key in ("video_path", "audio_path"):
            p = Path(str(task[key])).expanduser()
            if not p.is_absolute() and not p.exists():
                p = path.parent / p
            if not p.exists():
                raise InputError(f"{path}: task {name!r}: {key} not found: {task[key]}")
            resolved[key] = p
        shift = task.get("bbox_shift", 0)
        if not isinstance(shift, int):
            raise InputError(f"{path}: task {name!r}: bbox_shift must be an integer, got {shift!r}")
        tasks.append({"name": str(name), **resolved, "bbox_shift": shift})
    if not tasks:
        raise InputError(f"inference config {path} holds no tasks")
    return tasks


def render_inference_config(
    config: str | Path, output_dir: str | Path, progress: bool = True
) -> list[RenderResult]:
    """Render every task of a seed inference config into ``output_dir`` (one mp4 per task)."""
    tasks = load_inference_config(config)
    out_dir = Path(output_dir).expanduser()
    if out_dir.suffix.lower() == ".mp4":
        raise InputError("with --inference-config, -o names a folder for one mp4 per task")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    used: set[str] = set()
    for task in tasks:
        video, audio, shift = task["video_path"], task["audio_path"], task["bbox_shift"]
        # One cached avatar per source and crop, so tasks never re-prepare each other's.
        name = safe_name(video.stem if video.is_file() else video.name)
        if shift:
            name = safe_name(f"{name}_shift{shift}")
        prepare_avatar(name, video, PrepareOptions(bbox_shift=shift), progress=progress)
        stem = f"{safe_name(video.stem)}_{safe_name(audio.stem)}"
        if stem in used:  # MuseTalk's naming would overwrite an earlier task's output
            stem = safe_name(f"{stem}_{task['name']}")
        used.add(stem)
        results.append(render(name, out_dir / f"{stem}.mp4", audio=audio, progress=progress))
    return results
