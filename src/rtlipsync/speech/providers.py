"""Speech providers by name, from the settings file's ``tts:`` and ``asr:`` sections.

Each section names a ``provider`` and its options; what a provider does not know is an
error that lists what it does, so a typo never silently falls back to the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtlipsync.errors import InputError
from rtlipsync.speech.asr import ASRProvider, FasterWhisperASR, OpenAIASR, PocketSphinxASR
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.openai_tts import OpenAITTS
from rtlipsync.speech.tts import TTSProvider

TTS: dict[str, tuple[Callable[..., TTSProvider], set[str]]] = {
    "espeak": (EspeakTTS, {"voice", "rate_wpm"}),
    "openai": (OpenAITTS, {"base_url", "api_key", "model", "voice", "timeout"}),
}
ASR: dict[str, tuple[Callable[..., ASRProvider], set[str]]] = {
    "pocketsphinx": (PocketSphinxASR, set()),
    "openai": (OpenAIASR, {"base_url", "api_key", "model", "timeout"}),
    "faster-whisper": (FasterWhisperASR, {"model", "device", "compute_type", "language"}),
}


@dataclass(frozen=True)
class Provider:
    """A provider by name with its options: calling it makes one. Plain data, so it can be
    sent to a worker process, which makes (and keeps) its own."""

    kind: str
    name: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def make(self) -> Callable[..., Any]:
        return (TTS if self.kind == "tts" else ASR)[self.name][0]

    def __call__(self) -> Any:
        return self.make(**dict(self.options))

    @property
    def local(self) -> bool:
        """Whether it computes on this machine's CPU (and so belongs in a worker)."""
        return bool(getattr(self.make, "local", False))


def _factory(kind: str, table: dict, options: dict[str, Any]) -> Provider:
    options = dict(options)
    name = str(options.pop("provider", next(iter(table))))
    if name not in table:
        raise InputError(f"unknown {kind} provider {name!r}; known: {', '.join(table)}")
    _, known = table[name]
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"unknown {kind} option(s) for {name}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    return Provider(kind, name, tuple(sorted(options.items())))


def tts_factory(options: dict[str, Any]) -> Provider:
    """Makes each session's voice (espeak by default)."""
    return _factory("tts", TTS, options)


def asr_factory(options: dict[str, Any]) -> Provider:
    """Makes the server's recogniser (pocketsphinx by default)."""
    return _factory("asr", ASR, options)
