"""Listening: Silero voice activity with a minimum speech duration, and speech recognition."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from rtlipsync.media.frames import SAMPLE_RATE
from rtlipsync.speech import vad as vad_module
from rtlipsync.speech.asr import ASRProvider, OpenAIASR, PocketSphinxASR
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.vad import VoiceActivity
from rtlipsync.testing.fake_openai import FakeOpenAI

from conftest import espeak_pcm, serving_app


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.int16)


def events_of(pcm: np.ndarray, chunk: int = 320, **options) -> list:  # noqa: ANN003
    vad = VoiceActivity(**options)
    out = []
    for i in range(0, len(pcm), chunk):
        out += vad.push(pcm[i : i + chunk])
    return out


def test_one_utterance_gives_one_start_and_one_end() -> None:
    speech = espeak_pcm("Excuse me, could you tell me the way to the station?")
    pcm = np.concatenate([silence(1.0), speech, silence(1.0)])
    events = events_of(pcm)
    assert [e.kind for e in events] == ["onset", "start", "end"]
    onset, start, end = events
    assert 0.9 <= onset.at <= 1.1  # the first window that sounds like speech: duck now
    assert 0.9 <= start.at <= 1.35  # speech begins at 1.0 s
    assert 1.0 + len(speech) / SAMPLE_RATE - 0.4 <= end.at <= 1.0 + len(speech) / SAMPLE_RATE + 0.2
    assert len(end.audio) / SAMPLE_RATE >= 0.8 * len(speech) / SAMPLE_RATE
    # However the stream is chunked, the same events.
    assert [(e.kind, e.at) for e in events_of(pcm, chunk=777)] == [(e.kind, e.at) for e in events]


def test_a_cough_or_noise_does_not_start_speech() -> None:
    speech = espeak_pcm("Hm.")[: int(0.15 * SAMPLE_RATE)]  # a 150 ms vocal burst
    pcm = np.concatenate([silence(0.5), speech, silence(1.0)])
    # Shorter than min_speech (250 ms): no barge-in; heard at once, and over within 0.2 s.
    onset, lapse = events_of(pcm)
    assert (onset.kind, lapse.kind) == ("onset", "lapse")
    assert 0.45 <= onset.at <= 0.6 and 0.65 <= lapse.at <= 0.85  # it is at 0.5-0.65 s
    kinds = [e.kind for e in events_of(pcm, min_speech=0.064)]
    assert kinds == ["onset", "start", "end"]  # it was heard
    noise = (np.random.default_rng(0).normal(0, 0.05, 3 * SAMPLE_RATE) * 32767).astype(np.int16)
    assert events_of(noise) == []


def test_digital_silence_is_not_scored_once_the_model_has_settled(monkeypatch) -> None:  # noqa: ANN001
    """A muted microphone sends zeros; four of them took 8 % of the server in the model.
    Past the settling windows they are quiet without asking it, and the events stay."""
    speech = espeak_pcm("Excuse me, could you tell me the way to the station?")
    pcm = np.concatenate([silence(1.0), speech, silence(4.0), speech, silence(1.0)])
    vad = VoiceActivity()
    scored = 0
    score = vad._model.process_samples

    def counting(samples):  # noqa: ANN001, ANN202 - the model's own call, counted
        nonlocal scored
        scored += 1
        return score(samples)

    vad._model.process_samples = counting
    events = []
    for i in range(0, len(pcm), 320):
        events += vad.push(pcm[i : i + 320])
    monkeypatch.setattr(vad_module, "SETTLE_WINDOWS", 10**9)  # every window scored
    every = events_of(pcm)
    assert [e.kind for e in events].count("start") == 2
    assert [(e.kind, round(e.at, 2)) for e in events] == [(e.kind, round(e.at, 2)) for e in every]
    assert scored < 0.6 * len(pcm) / 512  # the silent stretches (~half) were not scored


def test_pocketsphinx_recognises_offline() -> None:
    asr = PocketSphinxASR()
    assert isinstance(asr, ASRProvider)
    words = asr.transcribe(espeak_pcm("one two three four five")).split()
    assert len({"one", "two", "three", "four", "five"} & set(words)) >= 3, words
    assert asr.transcribe(silence(1.0)) == ""
    # Digital silence, even to a fresh decoder (bare pocketsphinx hears "dog" in it), and a
    # quiet room give no words.
    assert PocketSphinxASR().transcribe(silence(1.0)) == ""
    room = np.random.default_rng(0).normal(0, 30, SAMPLE_RATE).astype(np.int16)
    assert PocketSphinxASR().transcribe(room) == ""


def test_openai_compatible_transcription() -> None:
    fake = FakeOpenAI(transcript="what time is it")
    speech = espeak_pcm("What time is it?")
    with serving_app(fake.app()) as base:
        asr = OpenAIASR(base_url=f"{base}/v1", api_key="k", model="whisper-tiny")
        assert asr.transcribe(speech) == "what time is it"
    upload = fake.uploads[0]
    assert upload["model"] == "whisper-tiny" and upload["name"] == "speech.wav"
    with wave.open(io.BytesIO(upload["bytes"])) as w:  # the real audio, as 16 kHz mono WAV
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, len(speech))


@pytest.mark.parametrize(
    ("voice", "text"), [("en-us", "Hello there!"), ("zh", "你好，今天天气怎么样？")]
)
def test_vad_hears_english_and_chinese(voice: str, text: str) -> None:
    speech = EspeakTTS().synthesize(text, voice=voice).at_rate(SAMPLE_RATE).pcm
    pcm = np.concatenate([silence(0.5), speech, silence(1.0)])
    assert [e.kind for e in events_of(pcm)] == ["onset", "start", "end"]


def test_providers_by_name_and_faster_whisper_extra() -> None:
    import importlib.util

    from rtlipsync.errors import InputError
    from rtlipsync.speech.providers import asr_factory, tts_factory

    assert isinstance(asr_factory({})(), PocketSphinxASR)
    asr = asr_factory({"provider": "openai", "base_url": "http://127.0.0.1:9/v1"})()
    assert isinstance(asr, OpenAIASR)
    assert tts_factory({"voice": "en-gb"})().voice == "en-gb"
    with pytest.raises(InputError, match="unknown asr provider 'whisperx'; known: pocketsphinx"):
        asr_factory({"provider": "whisperx"})
    with pytest.raises(
        InputError, match=r"unknown tts option\(s\) for openai: speed; known: api_key"
    ):
        tts_factory({"provider": "openai", "speed": 2})
    if importlib.util.find_spec("faster_whisper") is None:
        with pytest.raises(InputError, match=r'pip install -e "\.\[whisper\]"'):
            asr_factory({"provider": "faster-whisper", "model": "tiny"})()
    else:  # installed, but offline and without the model: it says where to put it
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            with pytest.raises(InputError, match="Systran/faster-whisper-tiny"):
                asr_factory({"provider": "faster-whisper", "model": "tiny"})()
        finally:
            del os.environ["HF_HUB_OFFLINE"]


SETTINGS_REFUSED = [  # (settings file, what the message must say)
    ("mode: realtime\nvad: {min_speech: 0.4}\n", "mode is realtime but no realtime service"),
    (
        "llm: {base_url: 'http://127.0.0.1:9/v1', temprature: 1}\n",
        "unknown llm setting.*temprature",
    ),
    (
        "llm: {base_url: 'http://127.0.0.1:9/v1', max_turns: many}\n",
        "llm.max_turns must be a number",
    ),
    ("asr: {provider: whisper}\n", "unknown asr provider 'whisper'"),
    ("vad: {min_silence: 0}\n", "vad.min_silence must be more than 0"),
    ("mode: karaoke\n", "mode must be repeat, chat or realtime"),
    ("vad: {min_speach: 0.4}\n", "unknown vad setting.*min_speach; known: min_speech, min_silence"),
    ("max_upload_mb: -1\n", "max_upload_mb must be more than 0"),
    ("webhook_hosts: hooks.lan\n", "webhook_hosts must be a list"),
]


def test_settings_sections(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from rtlipsync.config import VadSettings, load_settings
    from rtlipsync.errors import InputError
    from rtlipsync.speech.llm import LLMConfig
    from rtlipsync.speech.providers import Provider

    for name in ("RTLIPSYNC_REALTIME_URL", "RTLIPSYNC_LLM_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    path = tmp_path / "settings.yaml"
    path.write_text(
        "mode: realtime\nrealtime: {url: 'ws://127.0.0.1:9/v1/realtime'}\n"
        "vad: {min_speech: 0.4}\ntts: {provider: espeak}\n"
    )
    settings = load_settings(path)
    # Each section is the typed object its consumer takes, checked before anything starts.
    assert settings.mode == "realtime"
    assert settings.vad == VadSettings(min_speech=0.4) and settings.vad.options() == {
        "min_speech": 0.4
    }
    assert settings.tts == Provider("tts", "espeak")
    assert settings.realtime.url == "ws://127.0.0.1:9/v1/realtime"
    path.write_text("llm: {base_url: 'http://127.0.0.1:9/v1', max_turns: '4'}\n")
    assert load_settings(path).llm == LLMConfig(base_url="http://127.0.0.1:9/v1", max_turns=4)
    path.write_text("max_audio_seconds: 120\nwebhook_hosts: [hooks.lan]\n")
    settings = load_settings(path)
    assert (settings.max_audio_seconds, settings.webhook_hosts) == (120.0, ["hooks.lan"])
    for text, message in SETTINGS_REFUSED:
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            load_settings(path)
