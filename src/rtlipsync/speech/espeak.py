"""Offline TTS with espeak-ng, loaded from the ``espeakng-loader`` wheel through ctypes.

No system package and no download: the wheel carries ``libespeak-ng.so`` and its data. We ask
espeak-ng for phoneme events, which give each phoneme's start in the audio and name it in
IPA (the same symbols in every language), so the lip-sync engine can shape the mouth from
exact phonemes rather than guess them from sound.

espeak-ng keeps global state, so all calls go through one lock.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from rtlipsync.errors import InputError
from rtlipsync.media.frames import Phoneme
from rtlipsync.speech.tts import Speech

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002  # phoneme events name their phoneme in IPA
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_EVENT_END = 5


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

# Friendly names for the voices the product speaks; any espeak-ng voice name also works.
VOICES = {"en": "en-us", "en-us": "en-us", "en-gb": "en", "zh": "cmn", "cmn": "cmn", "ja": "ja"}


class _Engine:
    lock = threading.Lock()
    lib: ctypes.CDLL | None = None
    rate = 22050
    callback = None
    pcm: list[np.ndarray] = []
    events: list[tuple[int, str]] = []

    @classmethod
    def load(cls) -> ctypes.CDLL:
        if cls.lib is None:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.restype = ctypes.c_int
            lib.espeak_Initialize.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
            data = espeakng_loader.get_data_path().encode()
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                data,
                _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA,
            )
            if rate <= 0:
                raise RuntimeError("espeak-ng failed to initialise from espeakng-loader's data")
            cls.rate = rate
            cls.callback = _Callback(cls._on_audio)
            lib.espeak_SetSynthCallback(cls.callback)
            cls.lib = lib
        return cls.lib

    @classmethod
    def _on_audio(
        cls, wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)
    ) -> int:  # type: ignore[valid-type]
        if n > 0:
            cls.pcm.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                cls.events.append((ev.audio_position, ev.id.string.decode("utf-8", "replace")))
            i += 1
        return 0


class EspeakTTS:
    """espeak-ng speaking English, Chinese, Japanese and ~100 more languages, offline."""

    name = "espeak"

    def __init__(self, voice: str = "en-us", rate_wpm: int = 165) -> None:
        self.voice = voice
        self.rate_wpm = rate_wpm

    def synthesize(self, text: str, voice: str | None = None) -> Speech:
        text = text.strip()
        if not text:
            raise InputError("nothing to say: the text is empty")
        name = VOICES.get(voice or self.voice, voice or self.voice)
        with _Engine.lock:
            lib = _Engine.load()
            if lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise InputError(f"espeak-ng has no voice {name!r}; try en-us, cmn or ja")
            lib.espeak_SetParameter(1, self.rate_wpm, 0)  # espeakRATE
            _Engine.pcm, _Engine.events = [], []
            data = text.encode("utf-8")
            status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            pcm, events = _Engine.pcm, _Engine.events
            _Engine.pcm, _Engine.events = [], []
        if status != 0:
            raise RuntimeError(f"espeak-ng failed to speak (status {status})")
        audio = np.concatenate(pcm).astype(np.int16) if pcm else np.zeros(0, np.int16)
        duration = len(audio) / _Engine.rate
        phonemes = []
        for k, (ms, symbol) in enumerate(events):
            start = ms / 1000.0
            end = events[k + 1][0] / 1000.0 if k + 1 < len(events) else duration
            phonemes.append(Phoneme(symbol, start, max(0.0, end - start)))
        return Speech(audio, _Engine.rate, phonemes, text)
