"""A bank of the CPU engine's own drawn mouths, one per grid state: what a MuseTalk bank would
hold if MuseTalk drew each state exactly as the CPU engine means it. Serving speech from it
and measuring sync shows what the bank's state grid, nearest-state choice and optical-flow
interpolation cost, whoever drew the faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtlipsync.articulation import MouthParams
from rtlipsync.engines.cpu.engine import avatar_rigs
from rtlipsync.engines.musetalk.bank import grid, save_bank
from rtlipsync.face.avatar import Avatar
from rtlipsync.face.geometry import crop_face


def bake_reference(avatar: Avatar, progress: bool = False) -> Path:
    rigs = avatar_rigs(avatar)

    def faces(frame: int) -> list[np.ndarray]:
        base, rig = avatar.frames[frame], rigs.rig(frame)
        box = tuple(int(v) for v in avatar.boxes[frame])
        drawn = [
            base if rig is None else rig.render(base, MouthParams(open=float(o), width=float(w)))
            for o, w in grid()
        ]
        return [crop_face(image, box) for image in drawn]

    return save_bank(avatar, faces, {"engine": "cpu-reference"}, progress)
