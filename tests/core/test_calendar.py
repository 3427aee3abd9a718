"""The shop calendar: local dates of instants, and the instant each local date begins."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.rules import RulesError, default_rules_text, parse_rules
from worker.core.timeutil import DAY_MS, Calendar, format_ms, parse_rfc3339

HOUR_MS = 3_600_000
ZONES = ("UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin", "America/Santiago")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
instants = st.integers(parse_rfc3339("1995-01-01T00:00:00Z"), parse_rfc3339("2040-01-01T00:00:00Z"))


@given(instants, st.sampled_from(ZONES))
def test_the_day_of_an_instant_is_its_local_date(ms: int, zone: str) -> None:
    local = (EPOCH + timedelta(milliseconds=ms)).astimezone(ZoneInfo(zone)).date()
    assert Calendar(zone).day_of(ms) == (local - EPOCH.date()).days


@given(st.integers(9_000, 25_000), st.sampled_from(ZONES))
def test_a_day_starts_at_its_first_instant(day: int, zone: str) -> None:
    """Santiago moves its clocks at midnight: some dates begin at 01:00 local."""
    calendar = Calendar(zone)
    start = calendar.start_ms(day)
    assert calendar.day_of(start) == day
    assert calendar.day_of(start - 1) == day - 1


@given(st.lists(instants, min_size=1, max_size=12), st.sampled_from(ZONES), st.data())
def test_the_last_day_of_instants_is_the_latest_of_their_dates(
    found: list[int], zone: str, data: st.DataObject
) -> None:
    """Also where several instants crowd the last two days, around a clock change or not."""
    last = max(found)
    found += data.draw(st.lists(st.integers(last - 2 * DAY_MS, last), max_size=6))
    found.sort()
    calendar = Calendar(zone)
    assert calendar.last_day_of(found) == calendar.days_of(found)[-1]


def test_days_around_clock_changes_are_23_and_25_hours_long() -> None:
    new_york = Calendar("America/New_York")
    spring = new_york.day_of(parse_rfc3339("2026-03-08T12:00:00-04:00"))
    autumn = new_york.day_of(parse_rfc3339("2026-11-01T12:00:00-05:00"))
    assert new_york.start_ms(spring + 1) - new_york.start_ms(spring) == 23 * HOUR_MS
    assert new_york.start_ms(autumn + 1) - new_york.start_ms(autumn) == 25 * HOUR_MS
    assert format_ms(new_york.start_ms(spring)) == "2026-03-08T05:00:00.000Z"
    assert format_ms(new_york.start_ms(spring + 1)) == "2026-03-09T04:00:00.000Z"


def test_utc_is_plain_arithmetic() -> None:
    utc = Calendar()
    assert utc.day_of(20_000 * DAY_MS - 1) == 19_999 and utc.start_ms(20_000) == 20_000 * DAY_MS
    assert Calendar("UTC") == utc and Calendar("Asia/Shanghai") != utc


def test_beijing_dates_are_not_utc_dates() -> None:
    """Issue 15, case 1: 2026-01-01 07:00 in Beijing is still 2025-12-31 in UTC."""
    ms = parse_rfc3339("2026-01-01T07:00:00+08:00")
    assert Calendar("Asia/Shanghai").day_of(ms) == Calendar().day_of(ms) + 1


def rules_text(zone: str) -> bytes:
    return default_rules_text().replace(b'timezone = "UTC"', f'timezone = "{zone}"'.encode())


def test_the_rules_name_the_calendar_and_refuse_unknown_zones() -> None:
    assert parse_rules(rules_text("Asia/Shanghai"), "x").calendar == Calendar("Asia/Shanghai")
    for zone in ("Asia/Beijing", "", "../../etc/passwd", "+08:00"):
        with pytest.raises(RulesError, match=r"calendar\.timezone: unknown time zone"):
            parse_rules(rules_text(zone), "x")
    with pytest.raises(RulesError, match=r"calendar\.timezone: must be an IANA"):
        parse_rules(default_rules_text().replace(b'timezone = "UTC"', b"timezone = 8"), "x")
