"""MuseTalk's audio conditioning: Whisper-tiny encoder states, one 50 x 384 window per frame.

For video frame f (25 fps) the UNet attends to Whisper rows [2f-4, 2f+6) (rows are 20 ms):
80 ms of past, the frame's own 40 ms, and 80 ms of future, each row carrying all five encoder
states (the embedded input, layers 1-3, and layer 4 after the final LayerNorm), flattened
time-major to 50 x 384. Rows before the utterance's start and after its end are zeros, as in
MuseTalk's own inference.

Positions and context follow the official code (``musetalk/utils/audio_processor.py``): the
utterance is cut into 30 s segments from its start, each segment is Whisper's whole input
(zero-padded to 30 s), and row r is position ``r % 1500`` of segment ``r // 1500``. A row's
value depends on everything else in its segment, because Whisper attends over its whole
input, so there are two ways of computing it:

- ``block_frames=None`` ("segment"): each segment is encoded once, when all of it has arrived
  (or the utterance has ended). The features are the official ones; a frame can wait up to
  30 s. For offline renders and parity checks.
- ``block_frames=N`` (streaming, the default N = 8): rows are computed N frames at a time from
  the segment's audio up to the block's end plus ``context_rows`` of look-ahead, the rest of the
  segment being the zeros Whisper pads with. The block schedule is fixed from each segment's
  start, so streamed and whole-clip features are the same frames however the audio was
  pushed; they differ from the official only by the segment's audio not yet heard.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rtlipsync.media.audio import GrowingBuffer
from rtlipsync.media.frames import FPS, SAMPLE_RATE

ROWS_PER_SECOND = 50
ROW_SAMPLES = SAMPLE_RATE // ROWS_PER_SECOND  # 320: 20 ms
LAYERS = 5
WIDTH = 384
PAST_ROWS, FUTURE_ROWS = 4, 6  # frame f: rows [2f - 4, 2f + 6)
WINDOW_ROWS = PAST_ROWS + FUTURE_ROWS  # 10 rows x 5 states = 50 tokens
SEGMENT_SECONDS = 30  # Whisper's fixed input, and the official code's segments
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE
SEGMENT_ROWS = SEGMENT_SECONDS * ROWS_PER_SECOND  # 1500 encoder positions
BLOCK_FRAMES = 8  # streaming: rows are computed 8 frames (320 ms) at a time
CONTEXT_ROWS = 6  # streaming: 120 ms of audio past a block's last row is heard with it


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


def lookahead(block_frames: int | None, context_rows: int = CONTEXT_ROWS) -> float:
    """Seconds of audio past a frame's end that the worst-placed frame waits for.

    Frame f's last row is 2f + 5. The frame that waits longest has that row second in its
    block (rows come in pairs): it needs the block's ``2 * block_frames`` rows and the
    look-ahead after them, 2 + 2 * block_frames + context_rows rows past its own end.
    """
    if block_frames is None:
        return float(SEGMENT_SECONDS)
    return (2 + 2 * block_frames + context_rows) / ROWS_PER_SECOND


class AudioFeatures:
    """Whisper rows for one utterance of 16 kHz audio (see the module's notes)."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        extractor,  # noqa: ANN001 - transformers' WhisperFeatureExtractor (log-mel)
        device: str = "cpu",
        block_frames: int | None = BLOCK_FRAMES,
        context_rows: int = CONTEXT_ROWS,
    ) -> None:
        if block_frames is not None and block_frames < 1:
            raise ValueError("block_frames must be at least 1 (or None: whole segments)")
        self.encoder = encoder
        self.extractor = extractor
        self.device = device
        self.dtype = next(encoder.parameters()).dtype
        self.block_rows = SEGMENT_ROWS if block_frames is None else 2 * block_frames
        self.context_rows = 0 if block_frames is None else context_rows
        self.lookahead = lookahead(block_frames, context_rows)
        self.reset()

    def reset(self) -> None:
        self._audio = GrowingBuffer(np.float32)
        self._rows = GrowingBuffer(np.float32, (LAYERS, WIDTH))  # rows computed so far
        self._ended = False

    def push(self, pcm: np.ndarray) -> None:
        """More of the utterance: int16 or float PCM at 16 kHz."""
        pcm = np.asarray(pcm)
        if pcm.dtype == np.int16:
            pcm = pcm.astype(np.float32) / 32768.0
        self._audio.append(pcm.astype(np.float32))

    def end(self) -> None:
        """No more audio: the last rows can be computed (zeros follow the end)."""
        self._ended = True

    @property
    def total_rows(self) -> int:
        """Rows the utterance has so far: floor(samples / 320), as MuseTalk trims them."""
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
        have = min(len(self._rows), self.total_rows)
        lo, hi = max(first, 0), min(first + WINDOW_ROWS, have)
        if hi > lo:
            rows[lo - first : hi - first] = self._rows.data[lo:hi]
        return rows.reshape(WINDOW_ROWS * LAYERS, WIDTH)

    def _compute(self) -> None:
        while True:
            start = len(self._rows)
            if start >= self.total_rows:
                return
            segment = start // SEGMENT_ROWS * SEGMENT_ROWS
            stop = min(start + self.block_rows, segment + SEGMENT_ROWS)
            # The block's audio: to its end and its look-ahead, never past its segment.
            need = min(stop + self.context_rows, segment + SEGMENT_ROWS) * ROW_SAMPLES
            if len(self._audio) < need and not self._ended:
                return
            self._rows.append(self._block(segment, start, stop, need))

    @torch.no_grad()
    def _block(self, segment: int, start: int, stop: int, need: int) -> np.ndarray:
        """Rows [start, stop) of the segment starting at row ``segment``, from its audio up to
        sample ``need`` (the extractor pads the rest of the 30 s with zeros)."""
        audio = self._audio.data[segment * ROW_SAMPLES : need]
        mel = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        states = encoder_states(self.encoder, mel.to(self.device, self.dtype))[0]
        return states[start - segment : stop - segment].float().cpu().numpy()
