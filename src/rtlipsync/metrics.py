"""Per-turn latency, logged with the session id and exported in Prometheus format.

A turn starts when the user stops speaking (or a typed request arrives). Its marks: the
recognised text (``heard``), the LLM's first token (chat), the TTS's first audio, the
realtime service's first reply audio (``provider_first_audio``), and the first lip-synced
frame handed to the transports (``first_frame``). Each server has its own registry, so several
apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.first_frame = Histogram(
            "rtlipsync_turn_first_frame_seconds",
            "end of user speech (or request) to first lip-synced frame sent",
            ["mode"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.llm_first_token = Histogram(
            "rtlipsync_llm_first_token_seconds",
            "request to the LLM's first token",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tts_first_audio = Histogram(
            "rtlipsync_tts_first_audio_seconds",
            "TTS request to its audio",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.provider_first_audio = Histogram(
            "rtlipsync_turn_provider_first_audio_seconds",
            "end of user speech to the realtime service's first reply audio",
            ["mode"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.turns = Counter("rtlipsync_turns", "turns started", ["mode"], registry=self.registry)
        self.sessions = Gauge("rtlipsync_sessions", "live sessions", registry=self.registry)
        self.frames = Counter(
            "rtlipsync_frames_sent", "frames sent by all sessions", registry=self.registry
        )


@dataclass
class Turn:
    """The timeline of one turn, in seconds from its start."""

    mode: str
    start: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> float | None:
        """Record ``name`` once; returns the elapsed seconds the first time."""
        if name in self.marks:
            return None
        self.marks[name] = time.monotonic() - self.start
        return self.marks[name]

    def as_ms(self) -> dict[str, int]:
        return {k: round(1000 * v) for k, v in self.marks.items()}
