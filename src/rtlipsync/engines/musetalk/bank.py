"""A MuseTalk bank: photoreal mouths rendered once on a GPU, served by the CPU engine.

Baking runs MuseTalk over every frame of the avatar's idle loop for a grid of mouth states
(how open x how spread), each state conditioned on the Whisper window of a real spoken frame
whose CPU-engine mouth parameters sit closest to it (from a phonetically varied passage said
by the offline voice). Serving needs no torch: the CPU engine reads the same parameters off
the live audio, takes the two nearest states of the current frame, meets them halfway with
optical flow (so the lips move rather than cross-fade), and pastes the result through the
avatar's blend mask. Silence shows the avatar's own frame.

File: ``<avatar>/musetalk/bank.npz`` — the state grid, which frames were baked, and JPEG
faces (256 x 256) in one byte buffer with offsets; written whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from rtlipsync.articulation import Articulator, MouthParams
from rtlipsync.face.avatar import Avatar
from rtlipsync.face.morph import meet
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE

if TYPE_CHECKING:
    from rtlipsync.engines.musetalk.engine import MuseTalkEngine

OPEN_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
WIDTH_LEVELS = (-0.5, 0.0, 0.5)  # rounded, neutral, spread
PASSAGE = (
    "Mama made a lovely pie. Who knew you could see the moon at noon? Bob, please open the "
    "window wide; the air is fresh and warm. Eat each peach, then choose the blue shoes. "
    "Father saw a large dog on the far hill, and we all ran home."
)


def bank_path(avatar: Avatar) -> Path:
    return avatar.path / "musetalk" / "bank.npz"


def grid() -> np.ndarray:
    """(S, 2) states: (open, width) for every pair of levels."""
    return np.array([(o, w) for o in OPEN_LEVELS for w in WIDTH_LEVELS], np.float32)


def state_windows(engine: MuseTalkEngine, passage: str = PASSAGE) -> np.ndarray:
    """(S, 50, 384): for each grid state, the Whisper window of the spoken frame whose
    CPU-engine parameters are closest to it."""
    from rtlipsync.engines.musetalk.features import AudioFeatures
    from rtlipsync.speech.espeak import EspeakTTS

    speech = EspeakTTS().synthesize(passage).at_rate(SAMPLE_RATE)
    pcm = speech.pcm
    params = [(p.open, p.width) for p in Articulator().whole(pcm, tuple(speech.phonemes))]
    nets = engine.nets
    # The whole clip is here: its features as the official code computes them.
    features = AudioFeatures(nets.encoder, nets.extractor, str(nets.generate.device), None)
    features.push(pcm)
    features.push(np.zeros((-len(pcm)) % FRAME_SAMPLES, np.int16))
    features.end()
    count = min(len(params), features.frames_ready())
    measured = np.array(params[:count], np.float32)
    picks = [int(np.argmin(((measured - s) ** 2).sum(axis=1))) for s in grid()]
    return np.stack([features.window(f) for f in picks])


def bake(avatar: Avatar, engine: MuseTalkEngine, progress: bool = True) -> Path:
    """Render the bank for ``avatar`` (every face frame of its loop x every state)."""
    import torch

    from rtlipsync.engines.musetalk.engine import crop_latents

    windows = state_windows(engine)
    latents = crop_latents(avatar, engine.nets, engine.latents, engine.seed)

    def faces(frame: int) -> list[np.ndarray]:
        batch = torch.from_numpy(np.repeat(latents[frame : frame + 1], len(windows), axis=0))
        return engine.nets.batcher(batch, windows)

    info = {"engine": "musetalk", "version": engine.nets.version}
    return save_bank(avatar, faces, info, progress)


def save_bank(
    avatar: Avatar,
    faces: Callable[[int], Sequence[np.ndarray]],
    info: dict[str, Any],
    progress: bool = True,
) -> Path:
    """Write ``avatar``'s bank from ``faces(frame)`` (one 256² BGR face per `grid` state) for
    every face frame of its loop: whole, or (on any failure) not at all."""
    from tqdm import tqdm

    frames = sorted({int(i) for i in avatar.loop if avatar.boxes[int(i)][0] >= 0})
    states = grid()
    blobs: list[bytes] = []
    for i in tqdm(frames, desc=f"baking {avatar.name}", unit="frame", disable=not progress):
        made = faces(i)
        if len(made) != len(states):
            raise ValueError(f"{len(made)} faces for frame {i}, one per state ({len(states)})")
        for face in made:
            ok, jpeg = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            blobs.append(jpeg.tobytes())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    path = bank_path(avatar)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name("bank.tmp.npz")
    np.savez(
        tmp,
        states=states,
        frames=np.array(frames, np.int32),
        offsets=offsets,
        data=np.frombuffer(b"".join(blobs), np.uint8),
        info=np.array(json.dumps({**info, "frames": len(frames)})),
    )
    tmp.replace(path)
    avatar.extras.pop("musetalk_bank", None)  # a loaded older bank is stale now
    return path


class Bank:
    """A loaded bank: faces by (avatar frame, state), decoded on first use and kept."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.states = data["states"]
            self.frames = {int(f): k for k, f in enumerate(data["frames"])}
            self._offsets = data["offsets"]
            self._data = data["data"]
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def has(self, frame: int) -> bool:
        return frame in self.frames

    def face(self, frame: int, state: int) -> np.ndarray:
        key = (frame, state)
        if key not in self._cache:
            k = self.frames[frame] * len(self.states) + state
            blob = self._data[self._offsets[k] : self._offsets[k + 1]]
            self._cache[key] = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        return self._cache[key]

    def mouth(self, frame: int, params: MouthParams) -> np.ndarray:
        """The 256² face for ``params``: the two nearest states, met with optical flow."""
        target = np.array([params.open, params.width], np.float32)
        d = ((self.states - target) ** 2).sum(axis=1)
        a, b = (int(i) for i in np.argsort(d)[:2])
        da, db = float(np.sqrt(d[a])), float(np.sqrt(d[b]))
        t = da / (da + db) if da + db > 1e-6 else 0.0
        return meet(self.face(frame, a), self.face(frame, b), t)


def load_bank(avatar: Avatar) -> Bank | None:
    """The avatar's bank, if it has one (cached on the avatar)."""
    cached: Any = avatar.extras.get("musetalk_bank")
    if cached is not None:
        return cached
    path = bank_path(avatar)
    if not path.exists():
        return None
    bank = avatar.extras["musetalk_bank"] = Bank(path)
    return bank
