"""Cutting a streamed reply into sentences, so each can be spoken as soon as it is complete.

Works on English, Chinese and Japanese punctuation. A sentence shorter than `MIN_CHARS` is
held and joined to the next, so "Hi." does not become its own clipped utterance.
"""

from __future__ import annotations

import re

MIN_CHARS = 12  # a CJK character counts three
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_END = re.compile(r"([.!?;]+[\"')\]]*(?=\s)|[。！？；…]+|\n+)")
# An expression tag the LLM is asked to open its reply with: "[happy] Great to see you!"
_TAG = re.compile(r"^\s*\[(neutral|happy|concerned|sad|surprised)\]\s*", re.IGNORECASE)


class SentenceSplitter:
    """Feed text as it streams in; take whole sentences out."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            candidate = self._buffer[start : match.end()].strip()
            if len(candidate) + 2 * len(_CJK.findall(candidate)) >= MIN_CHARS:
                out.append(candidate)
                start = match.end()
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


def split_emotion(text: str) -> tuple[str | None, str]:
    """Take a leading ``[emotion]`` tag off ``text``: (emotion or None, the text to speak)."""
    match = _TAG.match(text)
    if not match:
        return None, text
    return match.group(1).lower(), text[match.end() :]


_KANA = re.compile(r"[\u3040-\u30ff]")


def language_of(text: str) -> str:
    """ "ja" for text with kana, "zh" for Han characters without kana, else "en".

    Enough to pick a voice for each sentence of a reply: a model answering in Chinese must
    not be read out by an English voice.
    """
    if _KANA.search(text):
        return "ja"
    if _CJK.search(text):
        return "zh"
    return "en"


_HAPPY = re.compile(
    r"\b(glad|happy|great|wonderful|love|delighted|congratulations|awesome|excellent|"
    r"fantastic|nice to|welcome|thank)\w*|[高开][兴心]|太好|嬉し|楽し|よかった|おめでとう",
    re.IGNORECASE,
)
_CONCERNED = re.compile(
    r"\b(sorry|unfortunately|afraid|sad|worr|concern|difficult|trouble|problem|can't|cannot|"
    r"apolog)\w*|抱歉|对不起|遗憾|难过|残念|すみません|ごめん|心配",
    re.IGNORECASE,
)


def estimate_emotion(text: str) -> str | None:
    """A crude expression for text that carries no tag (a realtime service's transcript):
    "happy" or "concerned" when the words say so, else None. The LLM's own tag is better."""
    happy, concerned = len(_HAPPY.findall(text)), len(_CONCERNED.findall(text))
    if happy > concerned:
        return "happy"
    if concerned > happy:
        return "concerned"
    return None
