"""Server settings: one YAML file, environment overrides, command-line flags over both.

host: 127.0.0.1          # RTLIPSYNC_HOST; use 0.0.0.0 to serve other machines
port: 8010               # RTLIPSYNC_PORT
avatar: default          # RTLIPSYNC_AVATAR
max_sessions: 8          # RTLIPSYNC_MAX_SESSIONS
ice_servers:             # none by default: no public STUN server is contacted
  - urls: turn:turn.example.org:3478
    username: user
    credential: secret
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rtlipsync.errors import InputError


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8010
    avatar: str = "default"
    max_sessions: int = 8
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    llm: dict[str, Any] = field(default_factory=dict)


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
        if env is not None and name not in ("ice_servers", "llm"):
            values[name] = env
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        for name in ("port", "max_sessions"):
            if name in values:
                values[name] = int(values[name])
    except ValueError as exc:
        raise InputError(f"port and max_sessions must be whole numbers: {exc}") from exc
    if not isinstance(values.get("ice_servers", []), list):
        raise InputError("ice_servers must be a list of {urls, username, credential}")
    if not isinstance(values.get("llm", {}), dict):
        raise InputError("llm must be a mapping: base_url, api_key, model, system_prompt")
    return Settings(**values)
