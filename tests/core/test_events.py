import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.engine import process_event
from worker.core.events import Order, ParseLimits, Reason, Rejection, Visit, parse_event
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import _parse_general, format_ms, parse_rfc3339

NOW = parse_rfc3339("2026-06-01T00:00:00Z")
LIMITS = ParseLimits()
ORDER = {
    "event_id": "e1",
    "customer_id": "c1",
    "occurred_at": "2026-05-01T10:00:00+02:00",
    "amount": "19.99",
    "currency": "USD",
    "status": "paid",
}


def parse(doc: object, kind: str | None = "order") -> object:
    return parse_event(orjson.dumps(doc), kind, now_ms=NOW, limits=LIMITS)  # type: ignore[arg-type]


def test_valid_order_normalises_time_amount_and_order_id() -> None:
    event = parse(ORDER)
    assert isinstance(event, Order)
    assert format_ms(event.occurred_ms) == "2026-05-01T08:00:00.000Z"
    assert event.amount_minor == 1999
    assert event.order_id == "e1"


def test_unknown_fields_are_ignored_and_type_routes_replay_lines() -> None:
    event = parse({**ORDER, "type": "visit", "action": "login", "extra": [1]}, None)
    assert isinstance(event, Visit)


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{", Reason.INVALID_JSON, None),
        (b'{"a": NaN}', Reason.INVALID_JSON, None),
        (b'"\xff"', Reason.INVALID_UTF8, None),
        (b"[1]", Reason.NOT_AN_OBJECT, None),
        (b"1e400", Reason.INVALID_JSON, None),
        (b"x" * (LIMITS.max_bytes + 1), Reason.OVERSIZED, None),
    ],
)
def test_undecodable_payloads(raw: bytes, reason: Reason, field: str | None) -> None:
    result = parse_event(raw, "order", now_ms=NOW, limits=LIMITS)
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (reason, field)


@pytest.mark.parametrize(
    ("patch", "reason", "field"),
    [
        ({"amount": -1}, Reason.NEGATIVE_AMOUNT, "amount"),
        ({"amount": "-1.00"}, Reason.NEGATIVE_AMOUNT, "amount"),
        ({"amount": "1.234"}, Reason.INVALID_VALUE, "amount"),
        ({"amount": True}, Reason.WRONG_TYPE, "amount"),
        ({"amount": 1e13}, Reason.INVALID_VALUE, "amount"),
        ({"status": "shipped"}, Reason.UNKNOWN_STATUS, "status"),
        ({"occurred_at": "2026-05-01T10:00:00"}, Reason.INVALID_TIMESTAMP, "occurred_at"),
        ({"occurred_at": "2026-13-01T10:00:00Z"}, Reason.INVALID_TIMESTAMP, "occurred_at"),
        ({"occurred_at": "2026-06-02T00:00:00Z"}, Reason.FUTURE_TIMESTAMP, "occurred_at"),
        ({"customer_id": ""}, Reason.INVALID_VALUE, "customer_id"),
        ({"customer_id": 7}, Reason.WRONG_TYPE, "customer_id"),
        ({"customer_id": "x" * 201}, Reason.INVALID_VALUE, "customer_id"),
        ({"currency": "usd"}, Reason.INVALID_VALUE, "currency"),
        ({"items": "3"}, Reason.WRONG_TYPE, "items"),
        ({"items": -1}, Reason.INVALID_VALUE, "items"),
        ({"attributes": []}, Reason.WRONG_TYPE, "attributes"),
        ({"event_id": None}, Reason.MISSING_FIELD, "event_id"),
    ],
)
def test_each_bad_field_has_its_reason(patch: dict, reason: Reason, field: str) -> None:
    result = parse({**ORDER, **patch})
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (reason, field)


@pytest.mark.parametrize("missing", ["event_id", "customer_id", "occurred_at", "amount", "status"])
def test_missing_required_fields(missing: str) -> None:
    doc = {k: v for k, v in ORDER.items() if k != missing}
    result = parse(doc)
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (Reason.MISSING_FIELD, missing)


def test_replay_line_needs_a_known_type() -> None:
    result = parse(ORDER, None)
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (Reason.UNKNOWN_TYPE, "type")


def test_amount_float_rounds_half_even_to_cents() -> None:
    event = parse({**ORDER, "amount": 0.125})
    assert isinstance(event, Order)
    assert event.amount_minor == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z"),
        ("2026-01-01T00:30:00.123456+01:00", "2025-12-31T23:30:00.123Z"),
        ("2026-01-01t00:00:00.5z", "2026-01-01T00:00:00.500Z"),
        ("1960-06-01T12:00:00-05:30", "1960-06-01T17:30:00.000Z"),
    ],
)
def test_rfc3339_round_trip(text: str, expected: str) -> None:
    assert format_ms(parse_rfc3339(text)) == expected


@pytest.mark.parametrize(
    "text", ["2026-01-01", "2026-01-01T00:00Z", "yesterday", "2026-01-01T00:00:00+1"]
)
def test_rfc3339_rejects_ambiguous_forms(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)


_FIELDS = st.tuples(
    st.integers(1, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.integers(0, 999),
)


@given(_FIELDS)
def test_rfc3339_common_shape_agrees_with_datetime(fields: tuple[int, ...]) -> None:
    """The fast path for ``YYYY-MM-DDTHH:MM:SS.fffZ`` reads what datetime reads (a leap
    second as :59), and rejects what is out of range as the general parse does."""
    year, month, day, hour, minute, second, millis = fields
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"
    try:
        expected = datetime(
            year, month, day, hour, minute, min(second, 59), millis * 1000, tzinfo=UTC
        )
    except ValueError:
        with pytest.raises(ValueError, match=r"range|must be in"):
            parse_rfc3339(text)
        return
    if second == 61:
        with pytest.raises(ValueError, match="time of day out of range"):
            parse_rfc3339(text)
        return
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_rfc3339(text) == (expected - epoch) // timedelta(milliseconds=1)


def _swapped(fields: tuple[int, ...], swap: tuple[int, str] | None) -> str:
    text = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format(*fields)
    return text if swap is None else text[: swap[0]] + swap[1] + text[swap[0] + 1 :]


# The common shape from fields in and out of range, sometimes with one character swapped for
# another separator, a letter or a digit of another script.
_NEAR_COMMON = st.builds(
    _swapped,
    _FIELDS,
    st.none() | st.tuples(st.integers(0, 23), st.sampled_from("0123456789:-.TtZz x\u0663")),
)


@settings(max_examples=1000)  # about 1% of draws reach each edge
@given(_NEAR_COMMON)
def test_rfc3339_common_shape_path_reads_as_the_general_parse(text: str) -> None:
    """The position-by-position path accepts exactly what the general parse accepts, with the
    same instant, and leaves every refusal (and its message) to it."""
    try:
        expected: int | str = _parse_general(text)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: int | str = parse_rfc3339(text)
    except ValueError as exc:
        got = str(exc)
    assert got == expected


_AMOUNTS = (
    st.integers(-5, 10**13)
    | st.floats(-1.0, 2e12, allow_nan=False)
    | st.decimals(0, 2 * 10**12, places=2).map(str)
    | st.from_regex(r"\A-?[0-9]{1,14}(\.[0-9]{0,3})?\Z")
)


@given(_AMOUNTS)
def test_amount_reads_as_decimal_rounded_half_even(amount: object) -> None:
    """Whatever path an amount takes (the plain-decimal fast path or Decimal), the result is
    the amount read as a decimal and rounded half-even to cents, or the same rejection."""
    result = parse({**ORDER, "amount": amount})
    text = repr(amount) if isinstance(amount, float) else str(amount)
    number = Decimal(text)
    if isinstance(amount, str) and re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", amount) is None:
        # text that is not a plain decimal with at most two places
        reason = Reason.NEGATIVE_AMOUNT if amount.startswith("-") else Reason.INVALID_VALUE
        assert isinstance(result, Rejection) and result.reason == reason
    elif number < 0:
        assert isinstance(result, Rejection) and result.reason == Reason.NEGATIVE_AMOUNT
    elif number > 10**12:
        assert isinstance(result, Rejection) and result.message == "amount exceeds 1e12"
    else:
        assert isinstance(result, Order)
        cents = number.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) * 100
        assert result.amount_minor == int(cents)


@pytest.mark.parametrize(
    "occurred_at",
    [
        "0001-01-01T00:30:00+01:00",
        "0001-01-01T03:00:00Z",
        "1899-12-31T23:59:59Z",
        "9999-12-31T23:00:00-05:00",
    ],
)
def test_a_timestamp_without_a_local_date_in_every_zone_is_rejected_not_a_crash(
    occurred_at: str,
) -> None:
    raw = orjson.dumps(
        {
            "type": "visit",
            "event_id": "e",
            "customer_id": "c",
            "occurred_at": occurred_at,
            "action": "login",
        }
    )
    now = parse_rfc3339("9999-12-31T23:59:59Z")  # the future check out of the way
    result = parse_event(raw, None, now_ms=now, limits=ParseLimits())
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == (Reason.INVALID_TIMESTAMP, "occurred_at")
    edge = parse_event(
        orjson.dumps(
            {
                "type": "visit",
                "event_id": "e",
                "customer_id": "c",
                "occurred_at": "1900-01-01T00:00:00Z",
                "action": "login",
            }
        ),
        None,
        now_ms=now,
        limits=ParseLimits(),
    )
    assert isinstance(edge, Visit)
    rules = load_rules(None)
    assert not isinstance(process_event(CustomerState("c"), edge, rules, 0, 0), Rejection)
