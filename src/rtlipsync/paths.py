"""The data root: where avatars, models and outputs live.

One root (``RTLIPSYNC_HOME``, else the user's data dir) so a server can confine every path a
request names to it, and so tests can point it at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


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
