"""Keeping native libraries' own printing off the user's terminal.

MediaPipe's C++ core (TFLite, absl) writes start-up notices straight to file descriptor 2
from its worker threads, at moments no caller controls. They mean nothing to a user and bury
our own one-line errors, so a process that talks to a terminal points fd 2 at /dev/null for
its lifetime and keeps Python's ``sys.stderr`` on the real terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_logs_hidden() -> Iterator[None]:
    """Send what native libraries write straight to fd 2 (MediaPipe's TFLite and absl start-up
    notices) to /dev/null, while Python's own stderr (errors, progress bars, logs) still
    reaches the terminal. Does nothing when stderr is not a real file (tests capture it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    if fd != 2:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0), write_through=True)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        sys.stderr.close()
        sys.stderr = old_stderr
        os.close(real)
        os.close(devnull)
