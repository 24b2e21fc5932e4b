"""The server's heavy jobs, as plain functions of plain data so a worker process can run
them (`rtlipsync.server.tasks`): what each endpoint reports comes back as a small dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtlipsync.face.avatar import PrepareOptions, prepare_avatar
from rtlipsync.render import render
from rtlipsync.workers import Progress


def ready() -> bool:
    """Nothing: calling it in a worker imports this module and everything the jobs need."""
    return True


def prepare(
    name: str, source: Path, bbox_shift: int = 0, on_progress: Progress | None = None
) -> dict[str, Any]:
    """Prepare avatar ``name`` from ``source``; what preparation found."""
    m = prepare_avatar(
        name, source, PrepareOptions(bbox_shift=bbox_shift), progress=False, on_progress=on_progress
    )
    found = m.get("footage") or {}
    return {
        "name": m["name"],
        "frames": m["frame_count"],
        "faces_missing": len(m["faces_missing"]),
        "footage": found.get("message"),  # "talking footage: 412 mouths banked, ..."
    }


def speak(
    avatar: str,
    out: Path,
    audio: Path,
    max_seconds: float | None = None,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Render ``avatar`` speaking ``audio`` (at most ``max_seconds`` of it) into ``out``; the
    audio's length in seconds."""
    result = render(
        avatar,
        out,
        audio=audio,
        progress=False,
        on_progress=on_progress,
        max_audio_seconds=max_seconds,
    )
    return {"seconds": result.audio_seconds}
