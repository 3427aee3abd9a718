"""Event-time arithmetic on integer epoch milliseconds.

Everything in the core is day-granular in the shop's calendar (:class:`Calendar`), so instants
travel as ints (exact, cheap to compare and to store) and are turned into text only at the
edges. A *day* is the number of dates between 1970-01-01 and a date of that calendar.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_EPOCH_DATE = date(1970, 1, 1)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d must not match other scripts' digits
)
# The shape nearly every feed sends, YYYY-MM-DDTHH:MM:SS.fffZ (UTC, milliseconds), is read by
# position: its hour's start from a cache of prefixes already checked, its two- and
# three-digit fields by lookup (cheaper than int() on a slice; only ASCII digits are keys).
_DIGITS = {f"{n:0{width}d}": n for width in (2, 3) for n in range(10**width)}
_HOUR_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}", re.ASCII)
_HOURS: dict[str, int | None] = {}  # "YYYY-MM-DDTHH" -> epoch ms of its start, None: invalid
_HOURS_KEPT = 8192


def parse_rfc3339(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp; an offset is mandatory.

    Stricter than ``datetime.fromisoformat``, which would accept dates without a time or an
    offset and so let a local-time timestamp be read as UTC.
    """
    if (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[16] == ":"
        and text[13] == ":"
    ):
        prefix = text[:13]
        hour_ms = _HOURS.get(prefix, -1)
        if hour_ms == -1:
            hour_ms = _hour_ms(prefix)
        digits = _DIGITS.get
        minute, second, millis = digits(text[14:16]), digits(text[17:19]), digits(text[20:23])
        if (
            hour_ms is not None
            and minute is not None
            and second is not None
            and millis is not None
            and minute <= 59
            and second <= 60
        ):
            return hour_ms + (minute * 60 + min(second, 59)) * 1000 + millis
    return _parse_general(text)


def _parse_general(text: str) -> int:
    """Any RFC 3339 timestamp with an offset, and every error's message."""
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


def _hour_ms(prefix: str) -> int | None:
    """Epoch milliseconds at the start of a UTC ``YYYY-MM-DDTHH`` (None if it is not one),
    kept in the cache."""
    start: int | None = None
    if _HOUR_PREFIX.fullmatch(prefix) is not None and int(prefix[11:13]) <= 23:
        try:
            start = (
                _epoch_day((prefix[:4], prefix[5:7], prefix[8:10])) * 24 + int(prefix[11:13])
            ) * _HOUR_MS
        except ValueError:
            start = None
    if len(_HOURS) >= _HOURS_KEPT:
        _HOURS.clear()  # events cluster in time: the next hours needed refill it at once
    _HOURS[prefix] = start
    return start


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


class Calendar:
    """The shop's dates: which local date an instant falls on, and when a local date begins.

    An IANA zone (tz database rules, daylight saving included). Both directions are cached,
    and UTC, the default, is plain arithmetic, so the hot path pays for a zone only when a
    shop has one.
    """

    __slots__ = ("_hour_offset", "_zone", "day_of", "days_of", "last_day_of", "name", "start_ms")
    day_of: Callable[[int], int]  # the local date holding an instant
    days_of: Callable[[list[int]], list[int]]  # the local dates of instants, sorted
    last_day_of: Callable[[list[int]], int]  # the latest local date of sorted instants
    start_ms: Callable[[int], int]  # the first instant of a local date

    def __init__(self, name: str = "UTC") -> None:
        """Raises ValueError when ``name`` is not a zone of the tz database."""
        self.name = name
        if name == "UTC":
            self.day_of = _utc_day
            self.days_of = _utc_days
            self.last_day_of = _utc_last_day
            self.start_ms = _utc_start
            return
        try:
            self._zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (an IANA name such as 'Asia/Shanghai')"
            ) from None
        self._hour_offset = lru_cache(maxsize=1 << 16)(self._offset_over_hour)
        self.day_of = self._day_of
        self.days_of = self._days_of
        self.last_day_of = self._last_day_of
        self.start_ms = lru_cache(maxsize=1 << 14)(self._start_ms)

    def __repr__(self) -> str:
        return f"Calendar({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Calendar) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def _offset_ms(self, ms: int) -> int:
        offset = datetime.fromtimestamp(ms // 1000, UTC).astimezone(self._zone).utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return offset // timedelta(milliseconds=1)

    def _offset_over_hour(self, hour: int) -> int | None:
        """The offset throughout UTC hour ``hour``, None if a clock change falls in it."""
        first = self._offset_ms(hour * _HOUR_MS)
        return first if self._offset_ms(hour * _HOUR_MS + _HOUR_MS - 1) == first else None

    def _day_of(self, ms: int) -> int:
        # By hour, cached: events cluster in time, and zoneinfo costs microseconds a call.
        offset = self._hour_offset(ms // _HOUR_MS)
        if offset is None:
            offset = self._offset_ms(ms)
        return (ms + offset) // DAY_MS

    def _days_of(self, instants: list[int]) -> list[int]:
        return sorted([self._day_of(ms) for ms in instants])

    def _last_day_of(self, instants: list[int]) -> int:
        # A clock set back across midnight can date a later instant a day earlier; offsets
        # differ by less than two days, so only the last two days' instants can hold the max.
        recent = instants[bisect_left(instants, instants[-1] - 2 * DAY_MS) :]
        return max([self._day_of(ms) for ms in recent])

    def _start_ms(self, day: int) -> int:
        """The first instant of local date ``day``: its midnight, or, where a clock change
        skips midnight, the instant the date begins (found between the two readings of
        midnight, one per offset around the change)."""
        d = _EPOCH_DATE + timedelta(days=day)
        readings = [
            int(datetime(d.year, d.month, d.day, fold=fold, tzinfo=self._zone).timestamp() * 1000)
            for fold in (0, 1)
        ]
        lo, hi = min(readings), max(readings)
        if self.day_of(lo) == day:
            return lo
        while hi - lo > 1:  # day_of(lo) < day <= day_of(hi); a single change lies between
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.day_of(mid) < day else (lo, mid)
        return hi


def _utc_day(ms: int) -> int:
    return ms // DAY_MS


def _utc_days(instants: list[int]) -> list[int]:
    return sorted([ms // DAY_MS for ms in instants])  # already in order: a linear check


def _utc_last_day(instants: list[int]) -> int:
    return instants[-1] // DAY_MS


def _utc_start(day: int) -> int:
    return day * DAY_MS


UTC_CALENDAR = Calendar()
