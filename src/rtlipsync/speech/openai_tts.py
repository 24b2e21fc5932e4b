"""Any server speaking OpenAI's ``/v1/audio/speech``: OpenAI, Kokoro-FastAPI, Speaches, LocalAI.

Audio is asked for as raw 24 kHz PCM and read as it streams in, so the first words reach the
lips before the rest is synthesized wherever the server streams (OpenAI does).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import soxr

from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.speech.tts import Speech, TTSError

PCM_RATE = 24_000  # what response_format="pcm" means in the API
LANGUAGE_HINTS = {"en", "zh", "ja", "en-us", "en-gb"}  # not voice names: the voices speak all


class OpenAITTS:
    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        timeout: float = 30.0,
    ) -> None:
        self.model = model
        self.voice = voice
        self.where = base_url or "OpenAI"
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0
        )

    def stream(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        if voice is None or voice in LANGUAGE_HINTS:
            voice = self.voice
        resampler = soxr.ResampleStream(PCM_RATE, SAMPLE_RATE, 1, dtype="int16")
        carry = b""
        try:
            with self._client.audio.speech.with_streaming_response.create(
                model=self.model, voice=voice, input=text, response_format="pcm"
            ) as response:
                for data in response.iter_bytes(4800):  # 100 ms
                    data = carry + data
                    whole = len(data) // 2 * 2
                    carry = data[whole:]
                    pcm = np.frombuffer(data[:whole], "<i2").astype(np.int16)
                    if len(pcm):
                        yield resampler.resample_chunk(pcm)
        except openai.APITimeoutError as exc:
            raise TTSError("the speech service took too long to answer") from exc
        except openai.APIConnectionError as exc:
            raise TTSError(f"the speech service at {self.where} is unreachable") from exc
        except openai.APIStatusError as exc:
            raise TTSError(f"the speech service refused: HTTP {exc.status_code}") from exc
        yield resampler.resample_chunk(np.zeros(0, np.int16), last=True)

    def synthesize(self, text: str, voice: str | None = None) -> Speech:
        pieces = list(self.stream(text, voice))
        return Speech(np.concatenate(pieces), SAMPLE_RATE, [], text)
