"""What a brain may do with its session: the narrow port between who answers and the rest.

Brains (`rtlipsync.speech.chat`, `rtlipsync.speech.realtime`) decide what the avatar says;
the session plays it. A brain sees only this: it begins and marks turns, speaks a sentence or
streams speech with its captions, interrupts, and tells the user. It never reaches into the
session's queues, engine or transports, so a brain can be driven by a fake in tests, and the
session can change inside without touching a brain. Interruption tells a brain how much was
heard (``played_samples`` against what it queued).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Conversation(Protocol):
    """The session, as a brain sees it (`rtlipsync.session.Session` implements it)."""

    id: int  # for log lines
    mode: str  # who answers: a brain whose service failed falls back to "repeat"
    notice: str  # the last thing the user should be told ("" clears it)
    heard: str  # what the user was last heard to say

    @property
    def queued_samples(self) -> int:
        """16 kHz speech samples queued since the last interruption."""
        ...

    @property
    def played_samples(self) -> int:
        """16 kHz speech samples played since the last interruption."""
        ...

    def begin_turn(self, mode: str, started: float | None = None) -> None: ...

    def mark(self, name: str) -> None: ...

    def set_notice(self, text: str) -> None: ...

    def interrupt(self) -> int: ...

    async def speak(
        self, text: str, voice: str | None, emotion: str | None, generation: int
    ) -> bool:
        """Say ``text`` in the session's voice; False when an interruption came first."""
        ...

    def push_stream(
        self,
        pcm: np.ndarray,
        end: bool = False,
        emotion: str | None = None,
        text: str | None = None,
    ) -> None:
        """Queue speech that arrives in pieces; ``end`` closes the utterance."""
        ...

    def caption_from(self, sample: int, text: str) -> None:
        """Show ``text`` once playback reaches ``sample``."""
        ...
