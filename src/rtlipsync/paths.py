"""The data root: where avatars, models and outputs live.

One root (``RTLIPSYNC_HOME``, else the user's data dir) so a server can confine every path a
request names to it, and so tests can point it at a temporary folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from rtlipsync.errors import InputError

MAX_PATH = 1024  # characters of a path a request may name
MAX_NAME = 255  # characters of one of its parts (the file systems' own limit)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # (also stated in the OpenAPI document)
_ID = re.compile(ID_PATTERN)


def data_root() -> Path:
    """Return the data root, created if missing."""
    root = os.environ.get("RTLIPSYNC_HOME")
    path = Path(root).expanduser() if root else Path(platformdirs.user_data_dir("rtlipsync"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(name: str) -> Path:
    """A folder of the data root, created if missing."""
    path = data_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def avatars_dir() -> Path:
    return data_dir("avatars")


def records_dir() -> Path:
    return data_dir("records")


def inside_root(path: str | Path, media_roots: Sequence[str | Path] = ()) -> Path:
    """Resolve a path a request names: relative to the data root, and never outside it
    (nor outside one of ``media_roots``, folders from which files may be read).

    Raises `PermissionError` for anything that resolves elsewhere (``..``, absolute paths,
    symbolic links out), so a server cannot be made to read or write beyond its data.
    """
    text = str(path)
    if "\0" in text:
        raise InputError("a path may not contain a NUL character")
    if len(text) > MAX_PATH or any(len(part) > MAX_NAME for part in Path(text).parts):
        raise InputError(
            f"path is too long: at most {MAX_PATH} characters, {MAX_NAME} per folder or file"
        )
    root = data_root().resolve()
    candidate = Path(path)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        roots = [root] + [Path(r).expanduser().resolve() for r in media_roots]
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the system refuses
        raise InputError(f"{path} is not a usable path: {exc}") from None
    if not any(resolved == r or r in resolved.parents for r in roots):
        where = "the data root and media_roots" if media_roots else "the data root"
        raise PermissionError(
            f"{path} is outside {where}: give a path inside it, or name its folder in the "
            "media_roots setting"
        )
    return resolved


def check_id(value: str, what: str) -> str:
    """An identifier that will name a file: letters, digits, '.', '_' and '-' only."""
    if not _ID.fullmatch(value):  # (match's $ lets a final newline through)
        raise InputError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-'")
    return value
