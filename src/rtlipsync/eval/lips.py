"""``rtlipsync eval lips``: does the mouth move like a real person saying the same words?

The ground-truth measure (see the project docs): a real talking clip, with its own audio,
is the truth. Its most closed-mouth frame becomes a still avatar, which is driven by the
clip's audio alone (no transcript, no phoneme hints); then the mouth opening of both videos
(inner-lip gap over face height, `rtlipsync.face.landmarks.lip_gap`) is compared frame by
frame on the rendered video's frame times:

- ``r``: Pearson r of the two curves at lag 0;
- ``closed_agreement``: of the frames where the real mouth is shut (below 0.25 of its 90th
  percentile), the share where the rendered one is shut too (below 0.25 of its own);
- ``best_r`` and ``best_lag_ms``: the best r within +-120 ms, and its lag (positive: the
  rendered mouth is late).

Each curve is scaled by its own 90th percentile, so faces and mouth sizes compare.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np
from tqdm import tqdm

from rtlipsync.errors import InputError
from rtlipsync.eval.sync import pearson
from rtlipsync.face.avatar import prepare_avatar
from rtlipsync.face.landmarks import FaceLandmarker, lip_gap
from rtlipsync.render import render, safe_name

if TYPE_CHECKING:
    from rtlipsync.engines.base import LipSyncEngine

SHUT = 0.25  # of the curve's 90th percentile
MAX_LAG_MS = 120
GOALS = {"r": 0.45, "closed_agreement": 0.6}


@dataclass
class OpeningCurve:
    """Mouth opening per decoded frame of a video, at the frame's own time."""

    times: np.ndarray  # seconds
    values: np.ndarray  # lip_gap, NaN where no face was found

    def at(self, times: np.ndarray) -> np.ndarray:
        valid = ~np.isnan(self.values)
        if valid.sum() < 2:
            return np.full(len(times), np.nan)
        out = np.interp(times, self.times[valid], self.values[valid])
        out[(times < self.times[0]) | (times > self.times[-1])] = np.nan
        return out


def opening_curve(video: str | Path, progress: bool = False) -> OpeningCurve:
    """Read every frame of ``video`` (at its own rate) and measure its mouth opening."""
    path = Path(video)
    if not path.is_file():
        raise InputError(f"video not found: {video}")
    times: list[float] = []
    values: list[float] = []
    try:
        with av.open(str(path)) as container, FaceLandmarker(video=True) as lm:
            if not container.streams.video:
                raise InputError(f"{path} has no video track")
            stream = container.streams.video[0]
            total = stream.frames or None
            for i, frame in enumerate(
                tqdm(
                    container.decode(stream),
                    total=total,
                    desc=f"measuring {path.name}",
                    unit="frame",
                    disable=not progress,
                )
            ):
                image = frame.to_ndarray(format="bgr24")
                t = float(frame.pts * stream.time_base) if frame.pts is not None else i / 25
                points = lm.detect(image)
                times.append(t)
                values.append(np.nan if points is None else lip_gap(points))
    except InputError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: {exc}") from exc
    if not times:
        raise InputError(f"{path} holds no video frames")
    t = np.array(times)
    t -= t[0]  # some containers start their first frame past zero
    return OpeningCurve(t, np.array(values, dtype=np.float64))


@dataclass
class LipsReport:
    r: float
    closed_agreement: float | None  # None when the real mouth is never shut
    best_r: float
    best_lag_ms: float
    frames: int  # frames compared

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _scaled(x: np.ndarray) -> np.ndarray:
    p90 = float(np.percentile(x, 90))
    return x / p90 if p90 > 0 else x


def compare(rendered: OpeningCurve, truth: OpeningCurve) -> LipsReport:
    """Compare a rendered opening curve with the real one, on the rendered frame times."""
    t = rendered.times
    real = truth.at(t)
    valid = ~np.isnan(real) & ~np.isnan(rendered.values)
    if valid.sum() < 10:
        raise InputError("too few frames with a face in both videos to compare (need 10)")
    ours = _scaled(rendered.values[valid])
    theirs = _scaled(real[valid])
    shut = theirs < SHUT
    agreement = float(np.mean(ours[shut] < SHUT)) if shut.any() else None
    best_r, best_lag = -2.0, 0.0
    for lag in range(-MAX_LAG_MS, MAX_LAG_MS + 1, 10):
        # rendered(t) against real(t - lag): a positive lag means the render is late.
        shifted = truth.at(t - lag / 1000.0)
        ok = valid & ~np.isnan(shifted)
        if ok.sum() < 10:
            continue
        r = pearson(rendered.values[ok], shifted[ok])
        if r > best_r:
            best_r, best_lag = r, float(lag)
    return LipsReport(
        r=pearson(ours, theirs),
        closed_agreement=agreement,
        best_r=best_r,
        best_lag_ms=best_lag,
        frames=int(valid.sum()),
    )


def measure_lips(video: str | Path, truth: str | Path, progress: bool = False) -> LipsReport:
    """Compare the mouth in ``video`` with the real one in ``truth``."""
    return compare(opening_curve(video, progress), opening_curve(truth, progress))


def most_closed_frame(truth: str | Path, progress: bool = False) -> tuple[np.ndarray, OpeningCurve]:
    """The real clip's most closed-mouth frame (among frames with a face), and its curve."""
    curve = opening_curve(truth, progress)
    valid = np.where(~np.isnan(curve.values))[0]
    if not len(valid):
        raise InputError(f"no face found in {truth}")
    wanted = int(valid[np.argmin(curve.values[valid])])
    with av.open(str(truth)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i == wanted:
                return frame.to_ndarray(format="bgr24"), curve
    raise InputError(f"{truth}: frame {wanted} could not be decoded again")


@dataclass
class ClipReport:
    clip: str
    report: LipsReport


def ground_truth(
    truth: str | Path,
    engine: LipSyncEngine | None = None,
    keep: str | Path | None = None,
    progress: bool = False,
) -> ClipReport:
    """The whole method on one real clip: its most closed-mouth frame becomes a still
    avatar (``truth-<name>`` in the data root), driven by the clip's audio alone; the
    render is compared with the clip. ``keep`` names a folder for the rendered mp4."""
    truth = Path(truth)
    still, real = most_closed_frame(truth, progress)
    name = truth_avatar_name(truth)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"{name}.png"
        cv2.imwrite(str(image), still)
        prepare_avatar(name, image, progress=False)
        out = Path(keep or tmp) / f"{truth.stem}-rendered.mp4"
        render(name, out, audio=truth, progress=progress, engine=engine)
        rendered = opening_curve(out, progress)
    return ClipReport(truth.name, compare(rendered, real))


def truth_avatar_name(truth: Path) -> str:
    """An avatar name for a truth clip's still."""
    return f"truth-{safe_name(truth.stem)[:50]}"


TRAIN_SHARE = 0.6


def footage_truth(
    truth: str | Path,
    engine: LipSyncEngine | None = None,
    keep: str | Path | None = None,
    share: float = TRAIN_SHARE,
    progress: bool = False,
    reverse: bool = False,
) -> ClipReport:
    """The footage-bank measure on one real clip: an avatar is prepared from its first
    ``share`` (video and audio, ``footage-<name>`` in the data root), driven by the audio of
    the rest, and compared with the real rest. Nothing of the compared part is seen when
    the avatar is made. ``reverse`` learns from the last ``share`` and compares the start
    instead: a second held-out part of the same clip, for figures that do not hang on
    where one split happens to fall."""
    from rtlipsync.media.audio import load_audio, to_int16
    from rtlipsync.media.frames import FPS, SAMPLE_RATE
    from rtlipsync.media.video import Mp4Writer, read_video_frames
    from rtlipsync.speech.asr import wav_bytes

    truth = Path(truth)
    real = opening_curve(truth, progress)
    audio, _ = load_audio(truth, SAMPLE_RATE)
    frames = list(read_video_frames(truth, FPS))
    n, learn = len(frames), int(len(frames) * share)
    if learn < 2 * FPS or n - learn < FPS:
        raise InputError(f"{truth.name} is too short to split ({n / FPS:.1f} s)")
    taught, shown = (
        (range(n - learn, n), range(n - learn)) if reverse else (range(learn), range(learn, n))
    )
    per_frame = SAMPLE_RATE // FPS
    name = f"footage-{'rev-' if reverse else ''}{safe_name(truth.stem)[:44]}"
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / f"{name}.mp4"
        h, w = frames[0].shape[:2]
        with Mp4Writer(first, w, h, FPS, SAMPLE_RATE) as writer:
            for k in taught:
                writer.write_video(frames[k])
                writer.write_audio(audio[k * per_frame : (k + 1) * per_frame])
        prepare_avatar(name, first, progress=progress)
        rest = Path(tmp) / "rest.wav"
        heard = audio[shown.start * per_frame : shown.stop * per_frame]
        rest.write_bytes(wav_bytes(to_int16(heard), SAMPLE_RATE))
        out = Path(keep or tmp) / f"{truth.stem}-footage{'-reverse' if reverse else ''}.mp4"
        render(name, out, audio=rest, progress=progress, engine=engine)
        rendered = opening_curve(out, progress)
    start, stop = shown.start / FPS, shown.stop / FPS
    inside = (real.times >= start - 1e-6) & (real.times < stop - 1e-6)
    part = OpeningCurve(real.times[inside] - start, real.values[inside])
    return ClipReport(truth.name, compare(rendered, part))


def medians(reports: list[ClipReport]) -> dict[str, float | None]:
    agreements = [c.report.closed_agreement for c in reports]
    known = [a for a in agreements if a is not None]
    return {
        "r": float(np.median([c.report.r for c in reports])),
        "closed_agreement": float(np.median(known)) if known else None,
        "best_r": float(np.median([c.report.best_r for c in reports])),
    }
