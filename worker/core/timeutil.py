"""Event-time arithmetic on integer epoch milliseconds.

Everything in the core is day-granular in UTC, so instants travel as ints (exact, cheap to
compare and to store) and are turned into text only at the edges.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import lru_cache

DAY_MS = 86_400_000
_EPOCH_DATE = date(1970, 1, 1)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d must not match other scripts' digits
)


def parse_rfc3339(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp; an offset is mandatory.

    Stricter than ``datetime.fromisoformat``, which would accept dates without a time or an
    offset and so let a local-time timestamp be read as UTC.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp with offset: {text[:64]!r}")
    year, month, day, hh, mm, ss, frac, utc, sign, off_h, off_m = m.groups()
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time of day out of range: {text[:64]!r}")
    offset = 0
    if not utc:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"offset out of range: {text[:64]!r}")
        offset = int(off_h) * 60 + int(off_m)
        if sign == "-":
            offset = -offset
    millis = int((frac + "000")[:3]) if frac else 0
    minutes = (_epoch_day((year, month, day)) * 24 + hour) * 60 + minute - offset
    return (minutes * 60 + min(second, 59)) * 1000 + millis


@lru_cache(maxsize=4096)
def _epoch_day(ymd: tuple[str, str, str]) -> int:
    return (date(int(ymd[0]), int(ymd[1]), int(ymd[2])) - _EPOCH_DATE).days


@lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    d = _EPOCH_DATE + timedelta(days=day)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"


@lru_cache(maxsize=4096)  # a batch stamps one emitted time, and an event's time, many times
def format_ms(ms: int) -> str:
    """RFC 3339 in UTC with exactly three fractional digits, so output is byte-stable."""
    day, rest = divmod(ms, DAY_MS)
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{_date_text(day)}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def format_optional(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def day_of(ms: int) -> int:
    """Days since 1970-01-01 of the UTC date holding ``ms``."""
    return ms // DAY_MS


def day_start_ms(day: int) -> int:
    return day * DAY_MS
