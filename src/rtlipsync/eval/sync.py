"""``rtlipsync eval sync``: does the mouth on a video move with its speech?

A weight-free measure (see the project docs): the per-frame mouth opening, read from the video
with face landmarks, against the audio's loudness envelope (RMS, low-passed below 10 Hz).

- correlation: the best Pearson r between opening and envelope over lags of +-200 ms;
- lag: the lag of that best r, in ms; positive means the video is behind the audio;
- silence: in stretches where nothing is said, how much the lips move (standard deviation of
  opening, relative to that during speech) and how open they are (median opening, relative to
  that during speech). Both should be small: still, closed lips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.signal import butter, filtfilt
from tqdm import tqdm

from rtlipsync.errors import InputError
from rtlipsync.face.landmarks import FaceLandmarker, mouth_opening
from rtlipsync.media.audio import load_audio
from rtlipsync.media.frames import FPS, SAMPLE_RATE
from rtlipsync.media.video import read_video_frames, video_info

ENV_RATE = 100  # envelope samples per second
MAX_LAG_MS = 200

# Goals: a floor against dead lips, not a target (real people score 0.14-0.40 on this
# correlation; a mouth driven by loudness alone scores 0.85). The mouth may lead the sound
# by up to 100 ms, as real mouths do, and may be late by at most 40 ms.
GOALS = {
    "correlation": 0.4,
    "max_lead_ms": 100,
    "max_late_ms": 40,
    "silence_motion": 0.25,
    "silence_open": 0.5,
}


@dataclass
class SyncReport:
    correlation: float
    lag_ms: float
    silence_motion: float | None  # std(opening | silence) / std(opening | speech)
    silence_open: float | None  # median(opening | silence) / median(opening | speech)
    frames: int
    frames_with_face: int
    speech_frames: int
    silence_frames: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def verdicts(self) -> dict[str, bool]:
        """Each goal and whether this measurement meets it."""
        out = {
            "correlation": self.correlation >= GOALS["correlation"],
            "lag": -GOALS["max_lead_ms"] <= self.lag_ms <= GOALS["max_late_ms"],
        }
        if self.silence_motion is not None and self.silence_open is not None:
            out["silence_motion"] = self.silence_motion <= GOALS["silence_motion"]
            out["silence_open"] = self.silence_open <= GOALS["silence_open"]
        return out


def envelope(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS over 20 ms windows every 10 ms, low-passed below 10 Hz (zero phase)."""
    hop, win = rate // ENV_RATE, rate // 50
    n = max(1, (len(samples) - win) // hop + 1)
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    padded = np.concatenate([samples, np.zeros(win, samples.dtype)])
    rms = np.sqrt(np.mean(padded[idx] ** 2, axis=1))
    if len(rms) > 12:
        b, a = butter(2, 10 / (ENV_RATE / 2))
        rms = np.maximum(filtfilt(b, a, rms), 0.0)
    return rms


def mouth_track(video: str | Path, progress: bool = False) -> np.ndarray:
    """Mouth opening per 25 fps frame (NaN where no face is found)."""
    duration, _ = video_info(video)
    values = []
    with FaceLandmarker(video=True) as lm:
        frames = read_video_frames(video, FPS)
        for frame in tqdm(
            frames,
            total=round(duration * FPS),
            desc="measuring",
            unit="frame",
            disable=not progress,
        ):
            points = lm.detect(frame)
            values.append(np.nan if points is None else mouth_opening(points))
    return np.array(values, dtype=np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two curves (0 when either is flat)."""
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def measure(opening: np.ndarray, samples: np.ndarray, rate: int = SAMPLE_RATE) -> SyncReport:
    """Compare a mouth-opening track (per 25 fps frame) with audio samples."""
    env = envelope(samples, rate)
    env_t = (np.arange(len(env)) * (rate // ENV_RATE) + rate // 100) / rate
    frame_t = (np.arange(len(opening)) + 0.5) / FPS
    valid = ~np.isnan(opening) & (frame_t < env_t[-1])
    if valid.sum() < 10:
        raise InputError("too few frames with a detectable face to measure sync (need 10)")
    best_r, best_lag = -1.0, 0.0
    for lag in range(-MAX_LAG_MS, MAX_LAG_MS + 1, 10):
        e = np.interp(frame_t[valid] + lag / 1000, env_t, env)
        r = pearson(opening[valid], e)
        if r > best_r:
            best_r, best_lag = r, float(lag)
    # Positive when the mouth matches audio that came earlier: the video is late.
    lag_ms = -best_lag
    db = 20 * np.log10(np.interp(frame_t, env_t, env) + 1e-9)
    loud = np.percentile(db[valid], 90)
    speech = valid & (db > max(loud - 20, -55))
    quiet = db < max(loud - 35, -65)
    # Only silence that lasts: 160 ms on both sides of a frame are quiet too.
    quiet = binary_erosion(quiet, structure=np.ones(9), border_value=1) & valid
    motion = still = None
    if quiet.sum() >= 5 and speech.sum() >= 5:
        sd_speech = float(np.std(opening[speech]))
        med_speech = float(np.median(opening[speech]))
        motion = float(np.std(opening[quiet])) / sd_speech if sd_speech > 0 else None
        still = float(np.median(opening[quiet])) / med_speech if med_speech > 0 else None
    return SyncReport(
        correlation=best_r,
        lag_ms=lag_ms,
        silence_motion=motion,
        silence_open=still,
        frames=len(opening),
        frames_with_face=int((~np.isnan(opening)).sum()),
        speech_frames=int(speech.sum()),
        silence_frames=int(quiet.sum()),
    )


def measure_sync(
    video: str | Path, audio: str | Path | None = None, progress: bool = False
) -> SyncReport:
    """Measure a video file against its own audio track, or against ``audio``."""
    if not Path(video).is_file():
        raise InputError(f"video not found: {video}")
    samples, rate = load_audio(audio if audio is not None else video, SAMPLE_RATE)
    return measure(mouth_track(video, progress), samples, rate)
