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


class Recorder:
    """A `FrameSink` that writes an H.264/AAC mp4."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path = path
        # A deep queue: the session's clock must never wait on the encoder.
        self._writer = Mp4Writer(path, width, height, FPS, SAMPLE_RATE, queue_size=250)
        self.frames = 0

    def put(self, frame: AVFrame) -> None:
        self._writer.write_video(frame.image)
        self._writer.write_audio(frame.audio)
        self.frames += 1

    def flush(self) -> None:
        """Nothing to drop: what reached the recorder was sent."""

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()
