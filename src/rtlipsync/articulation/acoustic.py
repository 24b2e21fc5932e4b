"""Articulation from the sound itself: a small network that hears which viseme is being said.

For speech with no text (uploads, jobs, unknown voices, languages without a transcript) the
mouth still has to close on m/b/p, round on o/u and open on a. A loudness meter cannot tell
"ba" from "da"; a phone recogniser can. This one is the project's own: a five-layer 1-D
convolutional network over log-mel frames, trained by ``scripts/train_articulation.py`` on
speech made with exact phoneme timings: espeak-ng in 25 languages and 40 voices, and
Festival's voices built from recordings of real speakers. It needs no download and no corpus.
Its weights ship in this package (``acoustic.npz``, 160 k weights, 0.6 MB) and it runs in
NumPy: with the front end, under a millisecond of one core per 40 ms frame.

Everything runs on 10 ms hops addressed by absolute sample index and is computed in whole
40 ms frames, so a stream fed in any chunks gives bit for bit what a whole file gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE

HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_FFT = 512
N_MELS = 40
HOPS_PER_FRAME = FRAME_SAMPLES // HOP  # 4
_WINDOW = np.hanning(WIN).astype(np.float32)
# log_mel's energy column, in dB, minus this is dB of full scale (a full-scale sine: -3).
DBFS_OFFSET = 10 * np.log10((N_FFT / 2) * float((_WINDOW.astype(np.float64) ** 2).sum()))


def mel_filters(warp: float = 1.0, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, N_FFT//2+1) triangular HTK-mel filters over 60-7600 Hz.

    ``warp`` scales the filters' frequencies (vocal tract length perturbation, used only in
    training to make voices of every size).
    """

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(60.0), mel(7600.0), n_mels + 2)) * warp
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


_MEL = mel_filters()


def log_mel(windows: np.ndarray, filters: np.ndarray = _MEL) -> np.ndarray:
    """(n, WIN) float audio windows → (n, N_MELS + 1): log-mel energies and log total energy
    (natural log of power)."""
    x = windows - windows.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(x * _WINDOW, n=N_FFT, axis=1)) ** 2
    mel = np.log(power @ filters.T + 1e-7)
    energy = np.log(power.sum(axis=1, keepdims=True) + 1e-7)
    return np.concatenate([mel, energy], axis=1).astype(np.float32)


class Normalizer:
    """Streaming per-voice normalisation of log-mel frames.

    The mean spectrum of speech frames (those within 35 dB of the recent peak) is tracked
    with a two-second memory from a prior, and subtracted, so the same sound reads the same
    through any microphone, codec or level; the energy column becomes the level below the
    recent peak. Training runs the same code, so the model knows what its first frames
    look like.
    """

    def __init__(self, prior: np.ndarray) -> None:
        self.prior = prior.astype(np.float32)
        self.reset()

    PEAK_FLOOR = -2.0  # natural log of power: ~35 dB below speech at a normal level
    SPEECH_BELOW_PEAK = 8.0  # 35 dB
    RATE = 0.005  # per speech hop: a two-second memory

    def reset(self) -> None:
        self.mean = self.prior.copy()
        self.peak = self.PEAK_FLOOR

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        out = np.empty_like(feats)
        for i, row in enumerate(feats):
            e = float(row[-1])
            self.peak = max(e, self.peak - 0.0115, self.PEAK_FLOOR)  # falls 0.05 dB a hop
            if e > self.peak - self.SPEECH_BELOW_PEAK:
                self.mean += (row[:-1] - self.mean) * self.RATE
            out[i, :-1] = row[:-1] - self.mean
            out[i, -1] = max(e - self.peak, -12.0) / 4.0 + 1.0
        return out


@dataclass
class ConvLayer:
    weight: np.ndarray  # (out, in * kernel), taps oldest first
    bias: np.ndarray
    kernel: int
    dilation: int

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation


class AcousticNet:
    """The network, run layer by layer on whole frames with a buffer per layer.

    Layer k sees ``span`` hops of its input before each output; the last layer's output for
    hop h is ready once input hop h + `future` has been heard.
    """

    def __init__(self, layers: list[ConvLayer], prior: np.ndarray, future: int) -> None:
        self.layers = layers
        self.prior = prior
        self.future = future  # hops of look-ahead the network needs
        # What digital silence looks like after normalisation: the input before speech.
        self.silence = Normalizer(prior)(log_mel(np.zeros((1, WIN), np.float32)))[0]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AcousticNet:
        layers = []
        k = 0
        while f"w{k}" in arrays:
            w = arrays[f"w{k}"]  # torch layout (out, in, kernel)
            kernel = w.shape[2]
            layers.append(
                ConvLayer(
                    weight=np.ascontiguousarray(w.transpose(0, 2, 1).reshape(w.shape[0], -1)),
                    bias=arrays[f"b{k}"].astype(np.float32),
                    kernel=kernel,
                    dilation=int(arrays[f"d{k}"]),
                )
            )
            k += 1
        return cls(layers, arrays["prior"], int(arrays["future"]))


@lru_cache(maxsize=1)
def load_net() -> AcousticNet:
    """The trained network that ships with the package."""
    path = resources.files("rtlipsync.articulation").joinpath("acoustic.npz")
    with resources.as_file(path) as p, np.load(p) as data:
        return AcousticNet.from_arrays({k: data[k] for k in data.files})


class NetStream:
    """Streaming inference: feed normalised frames, take posteriors.

    Input hops are buffered per layer so each is computed once; outputs lag the input by
    `AcousticNet.future` hops.
    """

    def __init__(self, net: AcousticNet) -> None:
        self.net = net
        self.reset()

    def reset(self) -> None:
        # Each layer's input history, primed as if silence had been going on forever (the
        # training pads every utterance the same way).
        self._buffers: list[np.ndarray] = []
        rows = self.net.silence[None, :]
        for k, layer in enumerate(self.net.layers):
            self._buffers.append(np.repeat(rows, layer.span, axis=0))
            rows = self._apply(layer, np.repeat(rows, layer.span + 1, axis=0))
            if k != len(self.net.layers) - 1:
                rows = np.maximum(rows, 0.0)

    @staticmethod
    def _apply(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
        n = len(x) - layer.span
        taps = [x[k * layer.dilation : k * layer.dilation + n] for k in range(layer.kernel)]
        return np.concatenate(taps, axis=1) @ layer.weight.T + layer.bias

    def push(self, feats: np.ndarray) -> np.ndarray:
        """Normalised input hops → logits for as many hops (each `future` hops behind)."""
        x = feats.astype(np.float32)
        last = len(self.net.layers) - 1
        for k, layer in enumerate(self.net.layers):
            full = np.concatenate([self._buffers[k], x])
            self._buffers[k] = full[len(full) - layer.span :] if layer.span else full[:0]
            x = self._apply(layer, full)
            if k != last:
                x = np.maximum(x, 0.0)
        return x
