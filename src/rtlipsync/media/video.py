"""Reading images and videos into 25 fps BGR frames, and writing H.264/AAC mp4 files."""

from __future__ import annotations

import glob
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from rtlipsync.errors import InputError
from rtlipsync.media.frames import FPS

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts"}


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8, refusing anything OpenCV cannot decode."""
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"cannot decode image {path}: the file is corrupt or not an image")
    return image


def even_crop(image: np.ndarray) -> np.ndarray:
    """Drop a last odd row/column: H.264 in yuv420p needs even sizes."""
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]


def video_info(path: str | Path) -> tuple[float, float]:
    """Return ``(duration_s, fps)`` of the first video stream, or raise `InputError`."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video track")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or FPS)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = (stream.frames or 0) / fps
    except InputError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: {exc}") from exc
    return duration, fps


def read_video_frames(path: str | Path, fps: int = FPS) -> Iterator[np.ndarray]:
    """Decode a video and yield BGR frames resampled to ``fps`` (sample and hold by time).

    Each output tick k shows the source frame on screen at time k/fps, so 30 fps sources drop
    frames and 12 fps sources repeat them, and the duration is kept.
    """
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: {exc}; is it a valid video file?") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tick = 0
        t0: float | None = None
        previous: np.ndarray | None = None
        last_time = 0.0
        src_step = 1.0 / float(stream.average_rate or fps)
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else last_time + src_step
                if t0 is None:
                    t0 = t
                t -= t0
                if previous is not None:
                    while tick / fps < t - 1e-6:
                        yield previous
                        tick += 1
                previous = frame.to_ndarray(format="bgr24")
                last_time = t
        except av.FFmpegError as exc:
            raise InputError(f"video {path} is corrupt at {last_time:.2f} s: {exc}") from exc
        if previous is not None:
            end = last_time + src_step
            while tick / fps < end - 1e-6:
                yield previous
                tick += 1


class Mp4Writer:
    """Write an H.264 + AAC mp4 atomically: the file appears only when complete.

    Frames are written to a temporary file next to the target and renamed on success, so a
    failed render never leaves a partial file behind. Encoding runs on a thread of its own
    (x264 releases the GIL), so rendering the next frame overlaps encoding this one.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: int = FPS,
        audio_rate: int | None = 16_000,
        crf: int = 20,
        preset: str = "veryfast",
        threads: int = 0,
        queue_size: int = 8,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise InputError(f"output must be an .mp4 file, got {self.path.name}")
        if not self.path.parent.is_dir():
            raise InputError(f"output folder does not exist: {self.path.parent}")
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=".mp4", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(tmp, mode="w")
        self._video = self._container.add_stream("libx264", rate=fps)
        self._video.width, self._video.height = width - width % 2, height - height % 2
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(crf), "preset": preset}
        # x264 picks its thread count by default: a moving 576x768 video costs 9 ms of x264 per
        # frame against ~1 ms of lip-sync, so encoding needs every core it can get.
        self._video.codec_context.thread_count = threads
        self._video.codec_context.time_base = Fraction(1, fps)
        self._audio = None
        self._audio_rate = audio_rate
        if audio_rate:
            self._audio = self._container.add_stream("aac", rate=audio_rate)
            self._audio.layout = "mono"
        self._frames = 0
        self._samples = 0
        self._queue: queue.Queue[tuple[str, np.ndarray] | None] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mp4-encode", daemon=True)
        self._thread.start()

    def write_video(self, image: np.ndarray) -> None:
        self._put(("video", even_crop(image)))

    def write_audio(self, samples: np.ndarray) -> None:
        """Write mono audio at ``audio_rate``: float32 in [-1, 1] or int16."""
        if self._audio is None or len(samples) == 0:
            return
        if samples.dtype != np.int16:
            samples = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self._put(("audio", samples))

    def _put(self, item: tuple[str, np.ndarray] | None) -> None:
        if self._error is not None:
            raise RuntimeError(f"encoding {self.path.name} failed: {self._error}") from self._error
        self._queue.put(item)

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                kind, data = item
                if kind == "video":
                    # OpenCV's BGR->I420 is several times faster than libswscale's here.
                    yuv = cv2.cvtColor(data, cv2.COLOR_BGR2YUV_I420)
                    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                    frame.pts = self._frames
                    self._frames += 1
                    packets = self._video.encode(frame)
                else:
                    frame = av.AudioFrame.from_ndarray(
                        data.reshape(1, -1), format="s16", layout="mono"
                    )
                    frame.sample_rate = self._audio_rate
                    frame.pts = self._samples
                    self._samples += len(data)
                    packets = self._audio.encode(frame)  # type: ignore[union-attr]
                for packet in packets:
                    self._container.mux(packet)
            for stream in (self._video, self._audio):
                if stream is not None:
                    for packet in stream.encode(None):
                        self._container.mux(packet)
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            self._error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def close(self) -> Path:
        self._put(None)
        self._thread.join()
        if self._error is not None:
            self.abort()
            raise RuntimeError(f"encoding {self.path.name} failed: {self._error}") from self._error
        self._container.close()
        os.replace(self._tmp, self.path)
        return self.path

    @staticmethod
    def discard_partials(path: str | Path) -> int:
        """Remove what writers of ``path`` left unfinished (a process killed mid-render
        cannot clean up after itself); how many files went."""
        path = Path(path)
        partials = list(path.parent.glob(f".{glob.escape(path.stem)}.*.mp4"))
        for partial in partials:
            partial.unlink(missing_ok=True)
        return len(partials)

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=5)
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
