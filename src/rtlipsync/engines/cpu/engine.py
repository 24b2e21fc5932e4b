"""The CPU lip-sync engine: speech → mouth shapes (`rtlipsync.articulation`) → pixels
(`render`)."""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from rtlipsync.articulation import Articulator, MouthParams
from rtlipsync.engines.cpu.render import FrameRig, IdleLife
from rtlipsync.face.avatar import Avatar, blend_masks
from rtlipsync.face.geometry import paste
from rtlipsync.media.audio import GrowingBuffer
from rtlipsync.media.frames import FPS, FRAME_SAMPLES, SAMPLE_RATE, AVFrame, SpeechChunk

_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)

# Each frame's OpenCV work is ~1 ms on small regions: thread fan-out costs more CPU than it
# saves, and a server runs many sessions side by side anyway.
cv2.setNumThreads(1)


class AvatarRigs:
    """Per-avatar render state shared by every stream on that avatar.

    Video avatars get their landmarks smoothed over time (face-mesh points jitter by a pixel
    or two from frame to frame, which would make the drawn mouth shimmer). Rigs are built on
    first use of a frame (~2 ms) and kept up to `MAX_BYTES`; past that they are rebuilt each
    time, which gives the same pixels at a little more CPU.
    """

    MAX_BYTES = 256 * 1024 * 1024

    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        lms = avatar.landmarks.copy()
        if len(lms) > 2:
            valid = ~np.isnan(lms[:, 0, 0])
            filled = lms.copy()
            idx = np.arange(len(lms))
            for k in range(lms.shape[1]):
                for c in range(2):
                    filled[:, k, c] = np.interp(idx, idx[valid], lms[valid, k, c])
            smooth = gaussian_filter1d(filled, sigma=1.2, axis=0, mode="nearest")
            lms = np.where(valid[:, None, None], smooth, np.nan)
        self.landmarks = lms
        self._rigs: dict[int, FrameRig | None] = {}
        self._bytes = 0

    def rig(self, index: int) -> FrameRig | None:
        if index in self._rigs:
            return self._rigs[index]
        points = self.landmarks[index]
        rig = None
        if not np.isnan(points[0, 0]):
            rig = FrameRig(points, self.avatar.frames[index], self.avatar.still)
        size = rig.nbytes if rig is not None else 0
        if self._bytes + size <= self.MAX_BYTES:
            self._rigs[index] = rig
            self._bytes += size
        return rig


def avatar_rigs(avatar: Avatar) -> AvatarRigs:
    rigs = avatar.extras.get("cpu")
    if rigs is None:
        rigs = avatar.extras["cpu"] = AvatarRigs(avatar)
    return rigs


class CpuStream:
    """One session's CPU lip-sync stream (see `rtlipsync.engines.base.EngineStream`)."""

    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        self._rigs = avatar_rigs(avatar)
        self._life = IdleLife(zlib.crc32(avatar.name.encode())) if avatar.still else None
        self._analyzer = Articulator()  # the utterance being pushed
        self.lookahead = self._analyzer.lookahead
        # Ended utterances whose frames are not all shown yet: each keeps its own
        # articulator, so the next utterance starts on a fresh frame grid meanwhile.
        self._ended: deque[Articulator] = deque()
        self._audio = GrowingBuffer()  # pushed speech not yet paired with a frame
        self._index = 0  # frames produced on this stream's timeline
        self._last = MouthParams()
        self._last_speaking = False

    @property
    def pending(self) -> float:
        return len(self._audio) / SAMPLE_RATE

    def push(self, chunk: SpeechChunk) -> None:
        self._audio.append(chunk.pcm)
        self._analyzer.push(chunk.pcm, chunk.phonemes, chunk.emotion, chunk.text)
        if chunk.end_of_utterance:
            pad = (-len(self._audio)) % FRAME_SAMPLES
            if pad:
                silence = np.zeros(pad, np.int16)
                self._audio.append(silence)
                self._analyzer.push(silence)
            self._analyzer.finish()
            self._ended.append(self._analyzer)
            self._analyzer = Articulator()

    def frames(self) -> Iterator[AVFrame]:
        while len(self._audio) >= FRAME_SAMPLES:
            while self._ended and self._ended[0].frames_ready() == 0:
                self._ended.popleft()  # all of that utterance shown
            source = self._ended[0] if self._ended else self._analyzer
            if source.frames_ready() == 0:
                return  # waiting for look-ahead
            params = source.take()
            yield self._frame(params, self._audio.take(FRAME_SAMPLES), speaking=True)

    def idle(self) -> AVFrame:
        # After speech the mouth closes over two frames rather than snapping shut.
        last = self._last
        params = MouthParams()
        if self._last_speaking:
            params = MouthParams(open=0.35 * last.open, width=0.35 * last.width, smile=last.smile)
        return self._frame(params, _SILENCE, speaking=False)

    def reset(self) -> None:
        self._analyzer.reset()
        self._ended.clear()
        self._audio.clear()

    def _frame(self, params: MouthParams, audio: np.ndarray, speaking: bool) -> AVFrame:
        loop = self.avatar.loop
        image = self._image(int(loop[self._index % len(loop)]), params, speaking)
        self._last = params
        self._last_speaking = speaking
        frame = AVFrame(
            image=image, audio=audio, index=self._index, speaking=speaking, mouth=params.as_dict()
        )
        self._index += 1
        return frame

    def _image(self, source: int, params: MouthParams, speaking: bool) -> np.ndarray:
        """Avatar frame ``source`` showing ``params``."""
        base = self.avatar.frames[source]
        rig = self._rigs.rig(source)
        if rig is None:
            return base.copy()
        if self._life is not None:
            blink, sway = self._life.at(self._index / FPS, params.open if speaking else 0.0)
            return rig.render(base, params, blink, sway)
        return rig.render(base, params)


class CpuEngine:
    """Mouth shapes from sound and phonemes, drawn with the face's own pixels; no weights."""

    name = "cpu"

    def prepare(self, avatar: Avatar, **options: Any) -> None:
        """Nothing beyond the avatar's landmarks is needed; rigs are built on first use."""

    def open_stream(self, avatar: Avatar) -> CpuStream:
        # An avatar baked on a GPU (`rtlipsync avatar bake`) is served from its MuseTalk bank;
        # one prepared from talking footage, from the person's own mouths.
        from rtlipsync.engines.cpu.footage import FootageStream, load_footage
        from rtlipsync.engines.musetalk.bank import load_bank

        bank = load_bank(avatar)
        if bank is not None:
            return BankStream(avatar, bank)
        real = load_footage(avatar)
        return CpuStream(avatar) if real is None else FootageStream(avatar, real)


class BankStream(CpuStream):
    """The CPU engine's mouth parameters, shown with MuseTalk faces from the avatar's bank."""

    def __init__(self, avatar: Avatar, bank: Any) -> None:
        super().__init__(avatar)
        self.bank = bank
        self.masks, self.mask_boxes = blend_masks(avatar)

    def _image(self, source: int, params: MouthParams, speaking: bool) -> np.ndarray:
        base = self.avatar.frames[source]
        if not (speaking and self.bank.has(source)):
            return base.copy()
        box = tuple(int(v) for v in self.avatar.boxes[source])
        face = self.bank.mouth(source, params)
        return paste(base, face, box, self.masks[source], self.mask_boxes[source])
