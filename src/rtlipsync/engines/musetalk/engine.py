"""The MuseTalk engine: the `LipSyncEngine` protocol over MuseTalk's networks.

- ``prepare`` adds the avatar's crop latents ([masked, reference] per frame, from the VAE)
  to its folder, once; the crop boxes and blend masks are already there (every avatar has
  them, by MuseTalk's rules).
- A stream takes speech as it comes: Whisper rows sit at the official code's positions in 30 s
  segments and are computed in fixed blocks (so streamed and batch output are the same
  frames), or, with ``audio="segment"``, a whole segment at a time, exactly as the official
  code computes them (offline renders); each ready frame's window goes through the UNet and
  the VAE in batches, and the face is pasted back into the avatar's own frame.
- On a GPU the face is pasted back on the device (`DeviceBlend`); on the CPU, by `paste`.
- Silence is not sent through the network (MuseTalk moves the lips in silence, a known
  artefact of its training data): a frame the voice activity model hears no speech in is
  the avatar's own frame, with a crossfade at speech's edges (`presence`). ``silence="off"``
  renders every frame, as the official code does (for parity checks).
- ``reset`` drops everything at once; the idle loop position keeps running.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtlipsync.engines.musetalk.features import BLOCK_FRAMES, AudioFeatures, lookahead
from rtlipsync.engines.musetalk.parsing import MASK_MODES
from rtlipsync.engines.musetalk.pipeline import Batcher, DeviceBlend, Generator, encode_crops
from rtlipsync.engines.musetalk.presence import SpeechPresence
from rtlipsync.errors import InputError
from rtlipsync.face.avatar import Avatar, blend_masks, parsed_masks_name
from rtlipsync.face.geometry import Region, crop_face, paste, paste_region
from rtlipsync.media.audio import GrowingBuffer
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE, AVFrame, SpeechChunk

log = logging.getLogger(__name__)

_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)


class MuseTalkNets:
    """The loaded networks (shared by every stream of an engine)."""

    def __init__(
        self,
        unet: Any,
        vae: Any,
        encoder: Any,
        extractor: Any,
        version: str,
        parser: Any = None,
        device_blend: bool | None = None,
    ) -> None:
        self.unet, self.vae, self.encoder, self.extractor = unet, vae, encoder, extractor
        self.version = version
        self.parser = parser  # BiSeNet, when its weights are present: parsed blend masks
        self.vae_key = _vae_key(vae)  # which VAE made an avatar's cached latents
        self.generate = Generator(unet, vae)
        gpu = self.generate.device.type == "cuda"
        # Paste faces back on the device (default on a GPU: the CPU then only copies regions).
        self.device_blend = gpu if device_blend is None else device_blend
        # Frames of every session on this device go through the networks together.
        self.batcher = Batcher(self.generate, max_batch=64 if gpu else 8, wait=0.003 if gpu else 0)

    @classmethod
    def load(
        cls,
        models: Path | None = None,
        version: str = "v15",
        device: str = "auto",
        dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> MuseTalkNets:
        """The official networks; fp16 on a GPU, fp32 on the CPU unless told otherwise.
        ``compile`` runs the UNet through ``torch.compile`` (slow first batches, then faster)."""
        from transformers import WhisperFeatureExtractor

        from rtlipsync.engines.musetalk import weights
        from rtlipsync.engines.musetalk.model import load_unet, load_vae, load_whisper_encoder

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("device cuda was asked for but no GPU is visible to torch")
        dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
        models = weights.check(version, models)
        extractor = WhisperFeatureExtractor.from_pretrained(models / "whisper")
        parser = None
        if all(weights.present(f, models) for f in weights.FILES if f.optional):
            from rtlipsync.engines.musetalk.parsing import load_parser

            parser = load_parser(models, device)
        nets = cls(
            load_unet(models, version, dtype, device),
            load_vae(models, dtype, device),
            load_whisper_encoder(models, dtype, device),
            extractor,
            version,
            parser,
        )
        if compile:  # after the Generator has put the constant time embedding in place
            nets.generate.unet = torch.compile(nets.generate.unet, dynamic=True)
        return nets


class MuseTalkEngine:
    name = "musetalk"

    def __init__(
        self,
        nets: MuseTalkNets,
        batch_size: int = 8,
        silence: str = "vad",
        latents: str = "mean",
        seed: int = 0,
        audio: str = "stream",
    ) -> None:
        """``silence``: "vad" shows the avatar's own face where no speech is heard (with a
        crossfade); "off" renders every frame, as the official code does. ``latents``: the
        VAE posterior's "mean" (default, repeatable) or a "sample" drawn with ``seed`` (the
        official code samples). ``audio``: "stream" computes Whisper rows 8 frames at a time
        (live sessions, 0.48 s look-ahead); "segment" waits for each whole 30 s segment and
        gives the official features exactly (offline renders, parity checks)."""
        if audio not in AUDIO_MODES:
            raise InputError(f"unknown audio mode {audio!r}: use {' or '.join(AUDIO_MODES)}")
        if silence not in SILENCE_MODES:
            raise InputError(f"unknown silence mode {silence!r}: use {' or '.join(SILENCE_MODES)}")
        if latents not in LATENT_MODES:
            raise InputError(f"unknown latents {latents!r}: use {' or '.join(LATENT_MODES)}")
        self.nets = nets
        self.batch_size = batch_size
        self.silence = silence
        self.latents = latents
        self.seed = seed
        self.audio = audio

    def prepare(self, avatar: Avatar, **options: Any) -> None:
        crop_latents(avatar, self.nets, self.latents, self.seed, self.nets.version)
        parse_masks(avatar, self.nets)

    def open_stream(self, avatar: Avatar) -> MuseTalkStream:
        version = self.nets.version
        latents = crop_latents(avatar, self.nets, self.latents, self.seed, version)
        parse_masks(avatar, self.nets)
        masks = _masks(avatar, version)
        boxes = crop_boxes(avatar, version)
        blend = _device_blend(avatar, self.nets, boxes, masks) if self.nets.device_blend else None
        return MuseTalkStream(
            avatar,
            self.nets,
            latents,
            masks,
            self.batch_size,
            blend,
            self.silence,
            self.audio,
            boxes,
        )


def crop_boxes(avatar: Avatar, version: str = "v15") -> np.ndarray:
    """The crop boxes ``version`` was trained on: v1.5's reach ``extra_margin`` below the chin
    (the avatar's own boxes), v1.0's do not (made again from the landmarks, once)."""
    if version != "v10":
        return avatar.boxes
    cached = avatar.extras.get("musetalk_v10_boxes")
    if cached is None:
        from rtlipsync.face.geometry import crop_box
        from rtlipsync.face.landmarks import to_68

        shift = int(avatar.manifest.get("options", {}).get("bbox_shift", 0))
        cached = avatar.boxes.copy()
        for i, points in enumerate(avatar.landmarks):
            if cached[i][0] >= 0:
                h, w = avatar.frames[i].shape[:2]
                cached[i] = crop_box(to_68(points), h, w, shift, extra_margin=0)
        avatar.extras["musetalk_v10_boxes"] = cached
    return cached


def _masks(avatar: Avatar, version: str) -> tuple[Any, np.ndarray]:
    """The blend masks for ``version``'s boxes: face-parsed where the parser made them, else
    the landmark masks (v1.0's made again around its own boxes)."""
    mode = MASK_MODES[version]
    if version != "v10" or (avatar.path / "musetalk" / parsed_masks_name(mode)).exists():
        return blend_masks(avatar, mode)
    cached = avatar.extras.get("musetalk_v10_masks")
    if cached is None:
        from rtlipsync.face.geometry import landmark_blend_mask

        boxes = crop_boxes(avatar, version)
        made = [
            landmark_blend_mask(points, tuple(int(v) for v in box))
            for points, box in zip(avatar.landmarks, boxes, strict=True)
        ]
        masks = [m for m, _ in made]
        cached = (masks, np.array([b for _, b in made], np.int32))
        avatar.extras["musetalk_v10_masks"] = cached
    return cached


def _device_blend(
    avatar: Avatar, nets: MuseTalkNets, boxes: np.ndarray, masks: tuple[Any, np.ndarray]
) -> DeviceBlend:
    """The avatar's `DeviceBlend` on the networks' device, shared by its sessions."""
    device = nets.generate.device
    cached = avatar.extras.get("musetalk_blend")
    if cached is not None and cached.masks is masks[0] and cached.device == device:
        return cached
    blend = DeviceBlend(avatar.frames, boxes, masks[0], masks[1], device)
    avatar.extras["musetalk_blend"] = blend
    return blend


def _vae_key(vae: Any) -> str:
    """A fingerprint of the VAE's weights: latents made by another VAE are not reused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items())[:8]:
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


LATENT_MODES = ("mean", "sample")


def crop_latents(
    avatar: Avatar, nets: MuseTalkNets, mode: str = "mean", seed: int = 0, boxes: str = "v15"
) -> np.ndarray:
    """(N, 8, 32, 32) float32 crop latents of every frame (zeros where no face) in the crop
    boxes of version ``boxes``, cached per VAE and ``mode``: the posterior's "mean" (the
    default: an avatar always gives the same latents, so renders repeat), or a "sample" drawn
    with ``seed``, as the official code draws one (unseeded there)."""
    name = "latents" if mode == "mean" else f"latents-sample{seed}"
    name += "-v10" if boxes == "v10" else ""
    crops_in = crop_boxes(avatar, boxes)
    key = f"{nets.vae_key}:{name}"
    cached = avatar.extras.get("musetalk")
    if cached is not None and cached[0] == key:
        return cached[1]
    folder = avatar.path / "musetalk"
    info = folder / f"{name}.json"
    path = folder / f"{name}.npy"
    if info.exists() and path.exists() and json.loads(info.read_text()).get("vae") == nets.vae_key:
        latents = np.load(path)
    else:
        generator = None
        if mode == "sample":
            generator = torch.Generator(device=str(next(nets.vae.parameters()).device))
            generator.manual_seed(seed)
        latents = np.zeros((len(avatar.frames), 8, 32, 32), np.float32)
        faces = [i for i, box in enumerate(crops_in) if box[0] >= 0]
        for start in range(0, len(faces), 8):
            batch = faces[start : start + 8]
            crops = np.stack([crop_face(avatar.frames[i], crops_in[i]) for i in batch])
            latents[batch] = encode_crops(nets.vae, crops, generator).float().cpu().numpy()
        folder.mkdir(exist_ok=True)
        tmp = folder / f"{name}.tmp.npy"
        np.save(tmp, latents)
        tmp.replace(path)
        info.write_text(json.dumps({"vae": nets.vae_key, "frames": len(latents), "mode": mode}))
    avatar.extras["musetalk"] = (key, latents)
    return latents


def parse_masks(avatar: Avatar, nets: MuseTalkNets) -> None:
    """With the parser loaded, make the avatar's blend masks by BiSeNet once, in the official
    mode of the networks' version (v1.5 "jaw", v1.0 "raw") and at full size, kept in
    ``musetalk/`` where `blend_masks` then prefers them."""
    mode = MASK_MODES[nets.version]
    path = avatar.path / "musetalk" / parsed_masks_name(mode)
    if nets.parser is None or path.exists():
        return
    from rtlipsync.engines.musetalk.parsing import blend_mask_from_parse, crop_blend_box, parse
    from rtlipsync.face.geometry import NO_BOX, blend_box

    boxes = crop_boxes(avatar, nets.version)
    mask_boxes = [blend_box(tuple(int(v) for v in b)) if b[0] >= 0 else NO_BOX for b in boxes]
    arrays = {"boxes": np.array(mask_boxes, np.int32)}
    for i, box in enumerate(boxes):
        if box[0] < 0:
            arrays[f"mask{i}"] = np.zeros((1, 1), np.uint8)
            continue
        mask_box = mask_boxes[i]
        labels = parse(nets.parser, crop_blend_box(avatar.frames[i], mask_box))
        arrays[f"mask{i}"] = blend_mask_from_parse(
            labels, tuple(int(v) for v in box), mask_box, mode
        )
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    avatar.extras.pop("blend_masks", None)


SILENCE_MODES = ("vad", "off")
AUDIO_MODES = ("stream", "segment")


def _block_frames(audio: str) -> int | None:
    return BLOCK_FRAMES if audio == "stream" else None


class _Utterance:
    def __init__(self, nets: MuseTalkNets, silence: str, audio: str) -> None:
        device = str(nets.generate.device)
        self.features = AudioFeatures(nets.encoder, nets.extractor, device, _block_frames(audio))
        self.presence = SpeechPresence() if silence == "vad" else None
        self.audio = GrowingBuffer()  # the utterance's samples, all kept (frames index it)
        self.made = 0  # frames produced
        self.ended = False

    @property
    def frames_total(self) -> int:
        # Ended utterances were padded to whole frames.
        return len(self.audio) // FRAME_SAMPLES

    def frames_ready(self) -> int:
        ready = min(self.features.frames_ready(), self.frames_total)
        if self.presence is not None:
            ready = min(ready, self.presence.frames_ready())
        return ready

    def weight(self, frame: int) -> float:
        """How much of ``frame`` is the generated face (1 with silence handling off)."""
        return 1.0 if self.presence is None else self.presence.weight(frame)


class MuseTalkStream:
    """One session's MuseTalk stream (see `rtlipsync.engines.base.EngineStream`)."""

    def __init__(
        self,
        avatar: Avatar,
        nets: MuseTalkNets,
        latents: np.ndarray,
        masks: tuple[np.ndarray, np.ndarray],
        batch_size: int,
        blend: DeviceBlend | None = None,
        silence: str = "vad",
        audio: str = "stream",
        boxes: np.ndarray | None = None,
    ) -> None:
        self.avatar = avatar
        self.boxes = avatar.boxes if boxes is None else boxes  # the version's crop boxes
        self.silence = silence
        self.audio = audio
        # What a frame waits for past its end: its Whisper block and that block's look-ahead.
        self.lookahead = lookahead(_block_frames(audio))
        self.nets = nets
        self.latents = latents
        self.masks, self.mask_boxes = masks
        self.batch_size = batch_size
        self.blend = blend  # paste on the device, or (None) on the CPU
        self._index = 0  # frames produced on this stream's timeline
        self._utterances: deque[_Utterance] = deque()
        # Frames rendered in a batch but not taken yet: a live session takes one per tick.
        self._ready: deque[AVFrame] = deque()

    @property
    def pending(self) -> float:
        unmade = sum(len(u.audio) - u.made * FRAME_SAMPLES for u in self._utterances)
        return (unmade + len(self._ready) * FRAME_SAMPLES) / SAMPLE_RATE

    def push(self, chunk: SpeechChunk) -> None:
        if not self._utterances or self._utterances[-1].ended:
            self._utterances.append(_Utterance(self.nets, self.silence, self.audio))
        u = self._utterances[-1]
        u.audio.append(chunk.pcm)
        u.features.push(chunk.pcm)
        if u.presence is not None:
            u.presence.push(chunk.pcm)
        if chunk.end_of_utterance:
            pad = (-len(u.audio)) % FRAME_SAMPLES
            u.audio.append(np.zeros(pad, np.int16))
            u.features.push(np.zeros(pad, np.int16))  # the last part-frame is played too
            u.features.end()
            if u.presence is not None:
                u.presence.push(np.zeros(pad, np.int16))
                u.presence.end()
            u.ended = True

    def frames(self) -> Iterator[AVFrame]:
        # A frame leaves the queue as it is yielded: a caller may stop after any frame (the
        # session's clock takes one per tick) and the rest of the batch waits for it.
        while True:
            if self._ready:
                yield self._ready.popleft()
                continue
            if not self._utterances:
                return
            u = self._utterances[0]
            ready = u.frames_ready()
            if u.made >= ready:
                if u.ended and u.made >= u.frames_total:
                    self._utterances.popleft()
                    continue
                return
            self._ready.extend(self._render(u, min(self.batch_size, ready - u.made)))

    def _render(self, u: _Utterance, count: int) -> list[AVFrame]:
        """The next ``count`` frames of ``u``: the spoken ones in one batch."""
        loop = self.avatar.loop
        plan = []
        for k in range(count):
            f = u.made + k
            audio = u.audio.data[f * FRAME_SAMPLES : (f + 1) * FRAME_SAMPLES].copy()
            source = int(loop[(self._index + k) % len(loop)])
            weight = u.weight(f)
            region = paste_region(self.avatar.frames[source].shape, self.mask_boxes[source])
            talk = weight > 0 and self.boxes[source][0] >= 0 and region is not None
            plan.append((f, audio, source, region if talk else None, weight))
        talking = [p for p in plan if p[3] is not None]
        pasted: dict[int, np.ndarray] = {}  # frame → its image with the face in
        if talking:
            latents = torch.from_numpy(np.stack([self.latents[p[2]] for p in talking]))
            windows = np.stack([u.features.window(p[0]) for p in talking])
            targets = [(self.blend, p[2]) for p in talking] if self.blend else None
            try:
                rows = self.nets.batcher(latents, windows, targets)
            except RuntimeError as exc:
                # The speech goes on with the avatar's own face rather than stopping the clock.
                log.error("MuseTalk could not render %d frames: %s", len(talking), exc)
                rows = []
            for (f, _, source, region, weight), row in zip(talking, rows, strict=False):
                pasted[f] = self._paste(source, row, region)
                if weight < 1.0:  # at speech's edges: part generated, part the avatar's own
                    own = self.avatar.frames[source][region].astype(np.float32)
                    mixed = weight * pasted[f][region].astype(np.float32) + (1 - weight) * own
                    pasted[f][region] = np.round(mixed).astype(np.uint8)
        out = []
        for f, audio, source, _, _ in plan:
            image = pasted[f] if f in pasted else self.avatar.frames[source].copy()
            out.append(AVFrame(image=image, audio=audio, index=self._index, speaking=True))
            self._index += 1
            u.made += 1
        return out

    def _paste(self, source: int, row: np.ndarray, region: Region) -> np.ndarray:
        """The avatar's frame with the generated ``row`` in: a blended region (device blend)
        or a face to paste here."""
        base = self.avatar.frames[source]
        if self.blend is None:
            box = tuple(int(v) for v in self.boxes[source])
            return paste(base, row, box, self.masks[source], self.mask_boxes[source])
        image = base.copy()
        image[region] = row
        return image

    def idle(self) -> AVFrame:
        loop = self.avatar.loop
        source = int(loop[self._index % len(loop)])
        frame = AVFrame(image=self.avatar.frames[source].copy(), audio=_SILENCE, index=self._index)
        self._index += 1
        return frame

    def reset(self) -> None:
        self._utterances.clear()
        self._index -= len(self._ready)  # the idle loop goes on from the last frame shown
        self._ready.clear()
