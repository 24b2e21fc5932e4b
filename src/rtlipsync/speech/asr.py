"""Speech recognition behind one interface: offline pocketsphinx, or any OpenAI-compatible
``/v1/audio/transcriptions`` endpoint (OpenAI, a local whisper server).

pocketsphinx ships its en-us acoustic model, language model and dictionary in the wheel, so
the default needs no download; it is rough on unusual voices, and the better recognisers plug
in through the same `ASRProvider`.
"""

from __future__ import annotations

import io
import threading
import wave
from typing import Protocol, runtime_checkable

import numpy as np

from rtlipsync.media.frames import SAMPLE_RATE


@runtime_checkable
class ASRProvider(Protocol):
    name: str

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        """Text of 16 kHz int16 mono speech ("" when nothing was recognised)."""
        ...


class PocketSphinxASR:
    """Offline English recognition with the model that ships in the pocketsphinx wheel."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        self._decoder = None
        self._lock = threading.Lock()  # one decoder, one utterance at a time

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        from pocketsphinx import Decoder

        with self._lock:
            if self._decoder is None:
                self._decoder = Decoder()
            decoder = self._decoder
            decoder.start_utt()
            decoder.process_raw(np.asarray(pcm, np.int16).tobytes(), full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


def wav_bytes(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, np.int16).tobytes())
    return buffer.getvalue()


class OpenAIASR:
    """Any server speaking OpenAI's ``/v1/audio/transcriptions``."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = "whisper-1",
        timeout: float = 30.0,
    ) -> None:
        import openai

        self.model = model
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0
        )

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        extra = {"language": language} if language else {}
        result = self._client.audio.transcriptions.create(
            model=self.model, file=("speech.wav", wav_bytes(pcm), "audio/wav"), **extra
        )
        return result.text.strip()
