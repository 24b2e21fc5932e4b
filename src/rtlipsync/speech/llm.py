"""Any OpenAI-compatible chat endpoint, streamed: OpenAI, Ollama, vLLM, llama.cpp's server.

One protocol covers local and hosted models; the base URL, key and model come from the
settings' ``llm:`` section or the environment (`rtlipsync.config` reads both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai

DEFAULT_PERSONA = (
    "You are a friendly digital human talking with someone face to face. Answer in one to "
    "three short spoken sentences, in the language you are spoken to, with no lists or "
    "markdown. Begin every reply with your expression in brackets: [neutral], [happy] or "
    "[concerned]."
)


class LLMError(Exception):
    """The language model could not answer; the message says why, for the user."""


@dataclass
class LLMConfig:
    base_url: str | None = None
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    system_prompt: str = DEFAULT_PERSONA
    max_turns: int = 10  # user+assistant pairs kept per session
    timeout: float = 30.0


class ChatLLM:
    """Streams a reply's text as it is generated."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "none",
            timeout=config.timeout,
            max_retries=0,
        )

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        received = False
        try:
            response = await self._client.chat.completions.create(
                model=self.config.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
            )
            async for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    received = True
                    yield chunk.choices[0].delta.content
        # (the timeout is a kind of connection error in openai's client: test it first)
        except openai.APITimeoutError as exc:
            raise LLMError("the language model took too long to answer") from exc
        except openai.APIConnectionError as exc:
            if received:
                raise LLMError("the language model's answer broke off") from exc
            where = self.config.base_url or "OpenAI"
            raise LLMError(f"the language model at {where} is unreachable") from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"the language model refused: HTTP {exc.status_code}") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"the language model failed: {exc}") from exc

    async def close(self) -> None:
        await self._client.close()
