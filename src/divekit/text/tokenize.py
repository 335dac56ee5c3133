"""9.2 Converting raw text into sequence data: the course's preprocessing and tokenization."""

from __future__ import annotations

import re
from collections.abc import Sequence

from divekit.errors import DivekitError

LEVELS = ("char", "word")


def preprocess_timemachine(text: str) -> str:
    """Replace every run of non-letters by one space and lower-case the rest, as the course does.

    Args:
        text: raw text, e.g. the whole of *The Time Machine*.

    Returns:
        The text over the 27 symbols ``a``-``z`` and the space (line breaks become spaces).
    """
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokenize(text_or_lines: str | Sequence[str], level: str = "char") -> list:
    """Split text into tokens: characters (``level="char"``) or whitespace-separated words.

    Args:
        text_or_lines: one string, or a sequence of strings (lines).
        level: ``"char"`` or ``"word"``.

    Returns:
        For one string, its list of tokens; for lines, one list of tokens per line.
    """
    if level not in LEVELS:
        raise DivekitError(f"token level must be 'char' or 'word', got {level!r}")
    split = list if level == "char" else str.split
    if isinstance(text_or_lines, str):
        return split(text_or_lines)
    return [split(line) for line in text_or_lines]


def preprocess_nmt(text: str) -> str:
    """The course's cleaning of translation pairs (d2l 10.5): non-breaking spaces become
    spaces, letters are lower-cased, and a space goes before ``, . ! ?`` that follow a non-space.

    ``"Go.\\tVa\\u202f!"`` becomes ``"go .\\tva !"``; ``"Wait..."`` becomes ``"wait . . ."``.
    """
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return re.sub(r"(?<=\S)([,.!?])", r" \1", text)
