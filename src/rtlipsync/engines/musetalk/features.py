"""MuseTalk's audio conditioning: Whisper-tiny encoder states, one 50 x 384 window per frame.

For video frame f (25 fps) the UNet attends to Whisper rows [2f-4, 2f+6) (rows are 20 ms):
80 ms of past, the frame's own 40 ms, and 80 ms of future, each row carrying all five encoder
states (the embedded input, layers 1-3, and layer 4 after the final LayerNorm), flattened
time-major to 50 x 384. Rows before the clip's start and after its end are zeros, as in
MuseTalk's own inference.

Streaming: Whisper attends over its whole 30 s input, so a row's value depends on what else
is in that input. To make streamed and whole-clip features the same, rows are always
computed in fixed blocks of ``BLOCK_FRAMES`` frames, each from the same audio window (up to
``CONTEXT`` seconds of past, the block, and its 80 ms look-ahead) wherever the block comes
in the clip and however the audio was pushed. A block is computed as soon as its look-ahead
has arrived, so a frame waits for 80 ms of future audio plus the rest of its block.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtlipsync.media.frames import FPS, SAMPLE_RATE

ROWS_PER_SECOND = 50
ROW_SAMPLES = SAMPLE_RATE // ROWS_PER_SECOND  # 320: 20 ms
LAYERS = 5
WIDTH = 384
PAST_ROWS, FUTURE_ROWS = 4, 6  # frame f: rows [2f - 4, 2f + 6)
WINDOW_ROWS = PAST_ROWS + FUTURE_ROWS  # 10 rows x 5 states = 50 tokens
SEGMENT_SAMPLES = 30 * SAMPLE_RATE  # Whisper's fixed input
BLOCK_FRAMES = 8  # rows are computed 8 frames (320 ms) at a time
CONTEXT = 10.0  # seconds of past audio each block sees


def positional_encoding(length: int = LAYERS * WINDOW_ROWS, width: int = WIDTH) -> torch.Tensor:
    """The sinusoidal encoding MuseTalk adds to each (50, 384) window before the UNet."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    pe = torch.zeros(length, width)
    pe[:, 0::2] = torch.sin(position * scale)
    pe[:, 1::2] = torch.cos(position * scale)
    return pe


def encoder_states(encoder: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """(B, 80, 3000) log-mel -> (B, 1500, 5, 384): the five states MuseTalk uses.

    Computed explicitly rather than through ``output_hidden_states``, whose last entry has
    changed meaning across transformers versions.
    """
    x = torch.nn.functional.gelu(encoder.conv1(mel))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    states = [x]
    for layer in encoder.layers:
        out = layer(x, attention_mask=None)
        x = out[0] if isinstance(out, tuple) else out
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return torch.stack(states, dim=2)


class AudioFeatures:
    """Whisper rows for a stream of 16 kHz audio, in fixed blocks (see the module's notes)."""

    def __init__(self, encoder: torch.nn.Module, extractor, device: str = "cpu") -> None:  # noqa: ANN001
        self.encoder = encoder
        self.extractor = extractor  # transformers' WhisperFeatureExtractor (log-mel)
        self.device = device
        self.dtype = next(encoder.parameters()).dtype
        self.reset()

    def reset(self) -> None:
        self._audio = np.zeros(0, np.float32)
        self._rows = np.zeros((0, LAYERS, WIDTH), np.float32)  # rows computed so far
        self._ended = False

    def push(self, pcm: np.ndarray) -> None:
        """More of the clip: int16 or float PCM at 16 kHz."""
        pcm = np.asarray(pcm)
        if pcm.dtype == np.int16:
            pcm = pcm.astype(np.float32) / 32768.0
        self._audio = np.concatenate([self._audio, pcm.astype(np.float32)])

    def end(self) -> None:
        """No more audio: the clip's last rows can be computed (zeros follow its end)."""
        self._ended = True

    @property
    def total_rows(self) -> int:
        """Rows the clip has so far: floor(samples / 320), as MuseTalk trims them."""
        return len(self._audio) // ROW_SAMPLES

    def frames_ready(self) -> int:
        """Frames whose windows can be made now."""
        self._compute()
        if self._ended:
            return self.total_frames
        ready = (len(self._rows) - FUTURE_ROWS) // 2 + 1 if len(self._rows) >= FUTURE_ROWS else 0
        return min(ready, self.total_frames)

    @property
    def total_frames(self) -> int:
        return len(self._audio) * FPS // SAMPLE_RATE

    def window(self, frame: int) -> np.ndarray:
        """The (50, 384) window of ``frame`` (without the positional encoding)."""
        if frame >= self.frames_ready():
            raise ValueError(f"frame {frame} is not ready: its audio has not all arrived")
        rows = np.zeros((WINDOW_ROWS, LAYERS, WIDTH), np.float32)
        first = 2 * frame - PAST_ROWS
        for i in range(WINDOW_ROWS):
            r = first + i
            if 0 <= r < min(len(self._rows), self.total_rows):
                rows[i] = self._rows[r]
        return rows.reshape(WINDOW_ROWS * LAYERS, WIDTH)

    def _compute(self) -> None:
        block_rows = 2 * BLOCK_FRAMES
        while True:
            start = len(self._rows)
            if start >= self.total_rows:
                return
            stop = start + block_rows
            need = (stop + FUTURE_ROWS) * ROW_SAMPLES  # the block's look-ahead
            if len(self._audio) < need and not self._ended:
                return
            self._rows = np.concatenate([self._rows, self._block(start, stop)])

    @torch.no_grad()
    def _block(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) from a window that depends on ``start`` alone."""
        first = max(0, start * ROW_SAMPLES - int(CONTEXT * SAMPLE_RATE))
        last = (stop + FUTURE_ROWS) * ROW_SAMPLES
        audio = np.zeros(last - first, np.float32)
        have = self._audio[first:last]
        audio[: len(have)] = have  # past the clip's end: silence, the same in every case
        mel = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        states = encoder_states(self.encoder, mel.to(self.device, self.dtype))[0]
        offset = first // ROW_SAMPLES
        return states[start - offset : stop - offset].float().cpu().numpy()
