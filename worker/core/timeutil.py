"""Event-time arithmetic on integer epoch milliseconds.

Everything in the core is day-granular in UTC, so instants travel as ints (exact, cheap to
compare and to store) and are turned into text only at the edges.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp; an offset is mandatory.

    Stricter than ``datetime.fromisoformat``, which would accept dates without a time or an
    offset and so let a local-time timestamp be read as UTC.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp with offset: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if m.group(8):
        tz = UTC
    else:
        delta = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-delta if m.group(9) == "-" else delta)
    frac = m.group(7) or ""
    millis = int((frac + "000")[:3])
    instant = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz)
    delta_ms = (instant - _EPOCH) // timedelta(milliseconds=1)
    return int(delta_ms) + millis


def format_ms(ms: int) -> str:
    """RFC 3339 in UTC with exactly three fractional digits, so output is byte-stable."""
    instant = _EPOCH + timedelta(milliseconds=ms)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def format_optional(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def day_of(ms: int) -> int:
    """Days since 1970-01-01 of the UTC date holding ``ms``."""
    return ms // DAY_MS


def day_start_ms(day: int) -> int:
    return day * DAY_MS
