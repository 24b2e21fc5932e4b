"""The chat brain: the user's words → a streamed LLM reply → speech, sentence by sentence.

Each sentence goes to the TTS the moment it is complete, so the avatar starts talking long
before the model has finished. The reply's leading ``[emotion]`` tag is taken off and given
to the engine as the utterance's expression. Memory is per session and bounded. If the
model fails, the user is told and the avatar goes back to idle; the session lives on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rtlipsync.speech.llm import ChatLLM, LLMError
from rtlipsync.speech.sentences import SentenceSplitter, language_of, split_emotion
from rtlipsync.speech.tts import TTSError

if TYPE_CHECKING:
    from rtlipsync.speech.port import Conversation

log = logging.getLogger(__name__)


class ChatBrain:
    """One session's conversation with a language model."""

    def __init__(self, llm: ChatLLM, system_prompt: str | None = None) -> None:
        self.llm = llm
        self.system_prompt = system_prompt or llm.config.system_prompt
        self.history: list[dict[str, str]] = []
        self.turns = 0  # replies remembered so far: a change a copy of the memory can see

    def restore(self, history: list[dict[str, str]]) -> None:
        """Continue a conversation held elsewhere (a session whose host stopped): its
        remembered turns, as bounded as this brain's own."""
        self.history = list(history[-2 * self.llm.config.max_turns :])
        self.turns += 1

    def _messages(self, user_text: str) -> list[dict[str, str]]:
        keep = 2 * self.llm.config.max_turns
        return [
            {"role": "system", "content": self.system_prompt},
            *self.history[-keep:],
            {"role": "user", "content": user_text},
        ]

    async def reply(self, session: Conversation, user_text: str, generation: int) -> None:
        """Speak the model's answer to ``user_text`` until done or interrupted."""
        messages = self._messages(user_text)
        splitter = SentenceSplitter()
        spoken: list[str] = []
        emotion: str | None = None
        first = True

        async def speak(sentence: str) -> None:
            nonlocal emotion, first
            if first:
                emotion, sentence = split_emotion(sentence)
                first = False
            sentence = sentence.strip()
            if not sentence:
                return
            # English replies use the configured voice; Chinese and Japanese get their own.
            language = language_of(sentence)
            voice = None if language == "en" else language
            if not await session.speak(sentence, voice, emotion, generation):
                raise asyncio.CancelledError
            spoken.append(sentence)

        try:
            async for delta in self.llm.stream(messages):
                session.mark("llm_first_token")
                for sentence in splitter.feed(delta):
                    await speak(sentence)
            for sentence in splitter.flush():
                await speak(sentence)
        except (LLMError, TTSError) as exc:
            log.warning("chat failed: %s", exc, extra={"session": session.id})
            session.set_notice(f"{exc}; the avatar could not answer")
        except Exception as exc:  # noqa: BLE001 - a provider's own failure mid-reply
            log.warning("chat failed: %r", exc, extra={"session": session.id})
            session.set_notice(f"the reply failed ({type(exc).__name__}); the avatar stopped there")
        finally:
            # What the user heard (or was about to) is what the model said, in its memory.
            self.history += [
                {"role": "user", "content": user_text},
                {"role": "assistant", "content": " ".join(spoken) or "(interrupted)"},
            ]
            del self.history[: max(0, len(self.history) - 2 * self.llm.config.max_turns)]
            self.turns += 1
