"""Text as a terminal shows it, for tables that line up whatever the script of their values:
an East Asian wide or full-width character takes two columns, a combining mark or a
zero-width format character none."""

from __future__ import annotations

import unicodedata

_ZERO_WIDTH = frozenset({"Mn", "Me", "Cf"})  # combining marks; format characters (ZWJ, ZWSP)


def width(text: str) -> int:
    """The columns ``text`` takes on a terminal."""
    return sum(_columns(char) for char in text)


def _columns(char: str) -> int:
    if unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def pad(text: str, columns: int, *, right: bool = False) -> str:
    """``text`` padded with spaces to ``columns`` (on the left with ``right``: right-aligned);
    longer text is left whole."""
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill


def clip(text: str, columns: int) -> str:
    """The longest start of ``text`` that takes at most ``columns`` (a wide character that
    would straddle the edge is left out, a combining mark stays with its character)."""
    used = 0
    for end, char in enumerate(text):
        used += _columns(char)
        if used > columns:
            return text[:end]
    return text
