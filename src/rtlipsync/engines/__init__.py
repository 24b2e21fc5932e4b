"""Lip-sync engines behind one protocol (see `rtlipsync.engines.base`)."""

from __future__ import annotations

from rtlipsync.engines.base import LipSyncEngine
from rtlipsync.errors import InputError

ENGINES = ("cpu", "musetalk")


def make_engine(
    name: str = "cpu",
    version: str = "v15",
    device: str = "auto",
    compile: bool = False,
    audio: str = "stream",
) -> LipSyncEngine:
    """An engine by name; MuseTalk loads its official weights once (``version``, ``device``,
    optionally ``torch.compile``-d) and computes its audio features live ("stream") or as
    whole official 30 s segments ("segment", for offline renders)."""
    if name == "cpu":
        from rtlipsync.engines.cpu import CpuEngine

        return CpuEngine()
    if name == "musetalk":
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise InputError(
                'the MuseTalk engine needs its extra: pip install -e ".[musetalk]"'
            ) from None
        from rtlipsync.engines.musetalk.engine import MuseTalkEngine, MuseTalkNets

        nets = MuseTalkNets.load(version=version, device=device, compile=compile)
        return MuseTalkEngine(nets, audio=audio)
    raise InputError(f"unknown engine {name!r}: use {' or '.join(ENGINES)}")
