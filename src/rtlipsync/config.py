"""Server settings: one YAML file, environment overrides, command-line flags over both.

host: 127.0.0.1          # RTLIPSYNC_HOST; use 0.0.0.0 to serve other machines
port: 8010               # RTLIPSYNC_PORT
avatar: default          # RTLIPSYNC_AVATAR
max_sessions: 8          # RTLIPSYNC_MAX_SESSIONS
mode: chat               # RTLIPSYNC_MODE; repeat | chat | realtime, for sessions that don't say
engine: cpu              # RTLIPSYNC_ENGINE; cpu | musetalk (the musetalk extra and its weights)
max_audio_seconds: 600   # RTLIPSYNC_MAX_AUDIO_SECONDS; longest audio upload, once decoded
max_upload_mb: 50        # RTLIPSYNC_MAX_UPLOAD_MB; audio uploads (/humanaudio, /jobs)
max_avatar_upload_mb: 300  # images and videos uploaded to become avatars
max_request_kb: 1024     # any other request body
max_queued_tasks: 8      # avatar preparations and renders waiting or running at once
webhook_hosts: []        # hosts a job's webhook may name although private or loopback
media_roots: []          # folders outside the data root whose files requests may name (read)
allowed_hosts: []        # Host headers answered; default: loopback names, or any off loopback
allowed_origins: []      # other sites' pages allowed to use the server from a browser
access_token: ""         # RTLIPSYNC_ACCESS_TOKEN; required by every route but the page and
                         # the probes when set (16+ characters); set one to serve a network
ice_servers:             # none by default: no public STUN server is contacted; the page
  - urls: turn:turn.example.org:3478     # is given the same (GET /ice_servers)
    username: user
    credential: secret
  - urls: [turn:turn2.example.org:3478, turns:turn2.example.org:5349]
    auth_secret: the-coturn-static-auth-secret   # time-limited credentials, made per ask
llm:                     # chat mode (or RTLIPSYNC_LLM_BASE_URL / _MODEL / _API_KEY)
  base_url: http://localhost:11434/v1
  model: llama3.2
  system_prompt: You are a museum guide.
realtime:                # realtime mode (or RTLIPSYNC_REALTIME_URL / _MODEL / _VOICE / _API_KEY)
  url: wss://api.openai.com/v1/realtime
  model: gpt-realtime
  voice: marin
  transcription_model: gpt-4o-mini-transcribe   # optional: spoken turns heard and remembered
tts:                     # espeak (default, offline) | openai (any /v1/audio/speech)
  provider: openai
  base_url: http://localhost:8880/v1
  model: kokoro
  voice: af_heart
asr:                     # pocketsphinx (default, offline) | openai | faster-whisper
  provider: faster-whisper
  model: small
vad:                     # the microphone's voice activity detection
  min_speech: 0.25       # s of speech before the avatar is interrupted (a cough is shorter)
  min_silence: 0.5       # s of quiet that ends the user's turn

Every layer overrides the one before it: defaults, the YAML file, ``RTLIPSYNC_*`` variables,
flags. The tree is typed and checked here, whole, before anything starts: each section
becomes the object its consumer takes (`LLMConfig`, `RealtimeConfig`, a speech `Provider`,
`VadSettings`), so no other module reads the environment or re-checks a key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from rtlipsync.errors import InputError
from rtlipsync.speech.llm import LLMConfig
from rtlipsync.speech.providers import Provider, asr_factory, tts_factory
from rtlipsync.speech.realtime import RealtimeConfig


@dataclass(frozen=True)
class VadSettings:
    """The microphone's voice activity detection; None: `VoiceActivity`'s own default."""

    min_speech: float | None = None  # s of speech before the avatar is interrupted
    min_silence: float | None = None  # s of quiet that ends the user's turn

    def options(self) -> dict[str, float]:
        """The values set, as `VoiceActivity` keyword arguments."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8010
    avatar: str = "default"
    max_sessions: int = 8
    mode: str = "chat"
    engine: str = "cpu"  # cpu | musetalk
    max_audio_seconds: float = 600.0
    max_upload_mb: float = 50.0
    max_avatar_upload_mb: float = 300.0
    max_request_kb: float = 1024.0
    max_queued_tasks: int = 8
    webhook_hosts: list[str] = field(default_factory=list)
    media_roots: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    access_token: str = ""  # "": none (callers on this machine are the operator)
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    llm: LLMConfig | None = None  # None: no language model named (chat mode repeats)
    realtime: RealtimeConfig | None = None  # None: no realtime service named
    tts: Provider = field(default_factory=lambda: tts_factory({}))
    asr: Provider = field(default_factory=lambda: asr_factory({}))
    vad: VadSettings = field(default_factory=VadSettings)


MIN_TOKEN = 16
SECTIONS = ("llm", "realtime", "tts", "asr", "vad")  # mappings (see `_sections`)
# Environment variables of the sections' fields; an API key falls back to OPENAI_API_KEY.
SECTION_ENV = {
    "llm": {
        "base_url": "RTLIPSYNC_LLM_BASE_URL",
        "model": "RTLIPSYNC_LLM_MODEL",
        "api_key": "RTLIPSYNC_LLM_API_KEY",
    },
    "realtime": {
        "url": "RTLIPSYNC_REALTIME_URL",
        "model": "RTLIPSYNC_REALTIME_MODEL",
        "voice": "RTLIPSYNC_REALTIME_VOICE",
        "api_key": "RTLIPSYNC_REALTIME_API_KEY",
    },
}
NUMBERS = ("max_audio_seconds", "max_upload_mb", "max_avatar_upload_mb", "max_request_kb")
# (lists come from the YAML file only)
LISTS = ("ice_servers", "webhook_hosts", "allowed_hosts", "allowed_origins", "media_roots")


def load_settings(path: str | Path | None = None, **flags: Any) -> Settings:
    """Defaults, then the YAML file, then ``RTLIPSYNC_*`` variables, then non-None ``flags``."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InputError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"config file {path} must be a mapping of settings")
        values.update(data)
    known = {f.name: f for f in fields(Settings)}
    for name in known:
        env = os.environ.get(f"RTLIPSYNC_{name.upper()}")
        if env is not None and name not in LISTS + SECTIONS:
            values[name] = env
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        for name in ("port", "max_sessions", "max_queued_tasks"):
            if name in values:
                values[name] = int(values[name])
    except ValueError as exc:
        raise InputError(
            f"port, max_sessions and max_queued_tasks must be whole numbers: {exc}"
        ) from exc
    for name in NUMBERS:
        try:
            if name in values:
                values[name] = float(values[name])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be a number: {exc}") from exc
        if name in values and values[name] <= 0:
            raise InputError(f"{name} must be more than 0, got {values[name]:g}")
    for name in LISTS[1:]:
        names = values.get(name, [])
        if not isinstance(names, list) or not all(isinstance(h, str) for h in names):
            what = "folders" if name == "media_roots" else "host names"
            raise InputError(f"{name} must be a list of {what}")
    for folder in values.get("media_roots", []):
        if not Path(folder).expanduser().is_dir():
            raise InputError(f"media_roots: {folder} is not a folder")
    servers = values.get("ice_servers", [])
    if not isinstance(servers, list) or not all(
        isinstance(s, dict) and isinstance(s.get("urls"), (str, list)) for s in servers
    ):
        raise InputError(
            "ice_servers must be a list of {urls, username, credential} "
            "(or {urls, auth_secret} for a TURN server's time-limited credentials)"
        )
    token = values.get("access_token", "")
    if not isinstance(token, str) or (token and len(token.strip()) < MIN_TOKEN):
        raise InputError(
            f"access_token must be at least {MIN_TOKEN} characters (a guessable one protects "
            "nothing); make one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    values["access_token"] = token.strip()
    if values.get("mode", "chat") not in ("repeat", "chat", "realtime"):
        raise InputError(f"mode must be repeat, chat or realtime, got {values['mode']!r}")
    for name in SECTIONS:
        if not isinstance(values.get(name) or {}, dict):
            raise InputError(f"{name} must be a mapping of options (see rtlipsync.config)")
    values.update(_sections({name: dict(values.get(name) or {}) for name in SECTIONS}))
    settings = Settings(**values)
    if settings.mode == "realtime" and settings.realtime is None:
        raise InputError("mode is realtime but no realtime service is configured (realtime.url)")
    return settings


def _sections(raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The YAML sections, with the environment over them, as their consumers' objects."""
    for section, variables in SECTION_ENV.items():
        for key, variable in variables.items():
            if os.environ.get(variable):
                raw[section][key] = os.environ[variable]
        if not raw[section].get("api_key") and os.environ.get("OPENAI_API_KEY"):
            raw[section]["api_key"] = os.environ["OPENAI_API_KEY"]
    llm = raw["llm"]
    realtime = raw["realtime"]
    url = realtime.get("url")
    if url is not None and urlsplit(str(url)).scheme not in ("ws", "wss"):
        raise InputError(f"realtime.url must start with ws:// or wss://, got {url!r}")
    vad = _typed("vad", VadSettings, raw["vad"])
    for key, value in dataclasses.asdict(vad).items():
        if value is not None and value <= 0:
            raise InputError(f"vad.{key} must be more than 0 seconds, got {value:g}")
    return {
        # A language model or service is named by its address or its key.
        "llm": _typed("llm", LLMConfig, llm) if llm.get("base_url") or llm.get("api_key") else None,
        "realtime": (
            _typed("realtime", RealtimeConfig, realtime)
            if realtime.get("url") or realtime.get("api_key")
            else None
        ),
        "tts": tts_factory(raw["tts"]),
        "asr": asr_factory(raw["asr"]),
        "vad": vad,
    }


def _typed(section: str, kind: type, options: dict[str, Any]) -> Any:
    """``kind`` made from ``options``, each converted to its field's type; a key it does not
    have, or a value that does not convert, is an error naming ``section.key``."""
    known = [f.name for f in fields(kind)]
    if unknown := sorted(set(options) - set(known)):
        raise InputError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    hints = typing.get_type_hints(kind)
    converted = {}
    for key, value in options.items():
        # The field's type, without its None: ``str | None`` converts with str.
        want = next(a for a in typing.get_args(hints[key]) or (hints[key],) if a is not type(None))
        try:
            converted[key] = None if value is None else want(value)
        except (TypeError, ValueError):
            what = "a number" if want in (int, float) else "text"
            raise InputError(f"{section}.{key} must be {what}, got {value!r}") from None
    return kind(**converted)
