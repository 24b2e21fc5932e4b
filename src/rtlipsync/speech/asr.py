"""Speech recognition behind one interface: offline pocketsphinx, any OpenAI-compatible
``/v1/audio/transcriptions`` endpoint (OpenAI, a local whisper server), or faster-whisper.

pocketsphinx ships its en-us acoustic model, language model and dictionary in the wheel, so
the default needs no download; it is rough on unusual voices, and the better recognisers plug
in through the same `ASRProvider`.
"""

from __future__ import annotations

import io
import threading
import wave
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from rtlipsync.errors import InputError
from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.paths import data_dir

if TYPE_CHECKING:
    from rtlipsync.workers import WorkerPool


@runtime_checkable
class ASRProvider(Protocol):
    name: str

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        """Text of 16 kHz int16 mono speech ("" when nothing was recognised)."""
        ...


class PocketSphinxASR:
    """Offline English recognition with the model that ships in the pocketsphinx wheel."""

    name = "pocketsphinx"
    local = True  # decodes on this machine's CPU, holding the interpreter: a worker's job

    def __init__(self) -> None:
        self._decoder = None
        self._lock = threading.Lock()  # one decoder, one utterance at a time

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        from pocketsphinx import Decoder

        if not np.any(pcm):
            return ""  # all zeros: pocketsphinx's log-energy features invent words ("dog")
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


class FasterWhisperASR:
    """Whisper on CTranslate2 (``pip install -e ".[whisper]"``): far better than pocketsphinx,
    in any language, near real time on a CPU with the small models.

    The model is fetched once from Hugging Face (``Systran/faster-whisper-<size>``) into the
    data root, or read from a local folder given as ``model``.
    """

    name = "faster-whisper"
    local = True

    def __init__(
        self,
        model: str = "base",
        device: str = "auto",
        compute_type: str = "int8",
        language: str | None = None,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise InputError(
                'faster-whisper is not installed: pip install -e ".[whisper]"'
            ) from None
        root = data_dir("models") / "faster-whisper"
        self.language = language
        try:
            self._model = WhisperModel(
                model, device=device, compute_type=compute_type, download_root=str(root)
            )
        except Exception as exc:  # noqa: BLE001 - hub, network and file errors alike
            raise InputError(
                f"the faster-whisper model {model!r} is not in {root} and could not be "
                f"downloaded ({type(exc).__name__}: {exc}); download Systran/faster-whisper-"
                f"{model} there when online, or set model to a local model folder"
            ) from exc
        self._lock = threading.Lock()

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        audio = np.asarray(pcm, np.int16).astype(np.float32) / 32768.0
        with self._lock:
            segments, _ = self._model.transcribe(
                audio,
                language=language or self.language,
                beam_size=1,
                condition_on_previous_text=False,
            )
            return " ".join(s.text.strip() for s in segments).strip()


_RECOGNISERS: dict[object, ASRProvider] = {}  # a worker process's recognisers, by factory


def transcribe_with(
    factory: Callable[[], ASRProvider], pcm: np.ndarray, language: str | None = None
) -> str:
    """Transcribe with the recogniser ``factory`` makes, made once per process (in a worker,
    its model stays loaded for the next utterance)."""
    key: object = factory
    try:
        hash(factory)
    except TypeError:  # options that are not hashable
        key = repr(factory)
    recogniser = _RECOGNISERS.get(key)
    if recogniser is None:
        recogniser = _RECOGNISERS[key] = factory()
    return recogniser.transcribe(pcm, language)


class WorkerASR:
    """A local recogniser run in a worker process: pocketsphinx holds the interpreter while
    it decodes (1-1.6 s after each spoken turn), which froze every session's video; in a
    worker the sessions' clocks never wait for it. ``transcribe`` blocks its caller (call it
    from a thread), and a crashed worker fails only that utterance."""

    local = False  # already off the server's process

    def __init__(self, factory: Callable[[], ASRProvider], pool: WorkerPool) -> None:
        self.factory, self.pool = factory, pool
        self.name = str(getattr(factory, "name", "asr"))

    def warm(self) -> None:
        """Start the worker and load the model there, without waiting: a tenth of a second
        of faint noise, transcribed and thrown away."""
        noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE // 10) * 30).astype(np.int16)
        self.pool.submit(transcribe_with, self.factory, noise, label="warming up")

    def transcribe(self, pcm: np.ndarray, language: str | None = None) -> str:
        future = self.pool.submit(
            transcribe_with, self.factory, np.asarray(pcm, np.int16), language, label="speech"
        )
        return future.result()
