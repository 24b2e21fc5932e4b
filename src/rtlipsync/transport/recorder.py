"""Recording a session: an mp4 of exactly what it sent, both tracks on the session's clock.

The recorder is one more sink of the session, so it receives the very frames (and the very
40 ms of audio each carries) that the transports send, and writes them side by side: the
tracks cannot drift. Encoding runs on the writer's own thread; the file appears complete or
not at all.
"""

from __future__ import annotations

from pathlib import Path

from rtlipsync.media.frames import FPS, SAMPLE_RATE, AVFrame
from rtlipsync.media.video import Mp4Writer


class RecordingFailed(Exception):
    """The recording could not be written (a full disk): nothing of it was kept."""


class Recorder:
    """A `FrameSink` that writes an H.264/AAC mp4.

    When writing fails (the disk is full), ``put`` removes the unfinished file and raises,
    so the session drops this sink and says why; ``close`` then raises `RecordingFailed`.
    """

    name = "the recording"

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path = path
        # A deep queue: the session's clock must never wait on the encoder.
        self._writer = Mp4Writer(path, width, height, FPS, SAMPLE_RATE, queue_size=250)
        self.frames = 0
        self.error: BaseException | None = None

    def put(self, frame: AVFrame) -> None:
        try:
            self._writer.write_video(frame.image)
            self._writer.write_audio(frame.audio)
        except RuntimeError as exc:
            self.error = exc.__cause__ or exc
            self._writer.abort()
            raise
        self.frames += 1

    def flush(self) -> None:
        """Nothing to drop: what reached the recorder was sent."""

    def close(self) -> Path:
        if self.error is None:
            try:
                return self._writer.close()
            except RuntimeError as exc:  # (close aborted it: no partial file stays)
                self.error = exc.__cause__ or exc
        raise RecordingFailed(f"the recording failed ({self.error}); nothing was saved")

    def abort(self) -> None:
        self._writer.abort()
