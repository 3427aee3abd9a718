"""Input events (order.v1, visit.v1, profile.v1) and their validation from raw bytes.

Parsing never raises for bad input: it returns a :class:`Rejection` with a reason code and the
offending field, so every caller (replay, live worker, fuzzers) routes bad input the same way.

Two paths share every rule (docs/parser.md). The fast one decodes and type-checks in one pass
with msgspec into a typed document (worker/core/documents.py), then applies the value rules; it
accepts only documents on which orjson and msgspec cannot disagree. Whatever it refuses goes to
the precise path, orjson and a field-by-field check in the contract's order, which alone writes
rejections, so each reason, field and message is the one that path has always given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from typing import Final, Literal, TypeVar, get_args

import msgspec
import orjson

from worker.core.documents import (
    CURRENCY,
    DECODE,
    DECODE_ANY,
    MAX_ACTION,
    MAX_LABEL,
    Doc,
    OrderDoc,
    ProfileDoc,
    Status,
    VisitDoc,
)
from worker.core.timeutil import parse_rfc3339

EventKind = Literal["order", "visit", "profile"]
T = TypeVar("T")
TraitValue = str | int | float | bool | None  # None: the trait is removed
STATUSES: Final = frozenset(get_args(Status))
MAX_AMOUNT: Final = Decimal(10) ** 12
_CENT: Final = Decimal("0.01")
_MAX_MINOR: Final = 10**14  # MAX_AMOUNT in minor units
_TRAIT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_CURRENCY_TEXT: Final = re.compile(CURRENCY)


# The instants an event may carry: any shop's local date of one exists (a date before year 1
# or after 9999 does not, and the classification of such an event would fail, not reject).
EARLIEST_MS: Final = -2_208_988_800_000  # 1900-01-01T00:00:00Z
LATEST_MS: Final = 253_370_764_800_000  # 9999-01-01T00:00:00Z


class Reason(StrEnum):
    """Why an input was rejected; the codes are part of the dead-letter contract."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    NEGATIVE_AMOUNT = "negative_amount"
    UNKNOWN_STATUS = "unknown_status"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    OVERSIZED = "oversized"
    UNSUPPORTED_CURRENCY = "unsupported_currency"
    MISSING_KEY = "missing_key"
    KEY_MISMATCH = "key_mismatch"
    TRAIT_LIMIT = "trait_limit"
    WRONG_PARTITION = "wrong_partition"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Order:
    event_id: str
    customer_id: str
    occurred_ms: int
    amount_minor: int
    currency: str
    status: str
    order_id: str
    region: str | None


@dataclass(frozen=True, slots=True)
class Visit:
    event_id: str
    customer_id: str
    occurred_ms: int
    action: str
    region: str | None


@dataclass(frozen=True, slots=True)
class Profile:
    """A customer's own traits as a CRM states them (profile.v1): gender, birth year,
    membership level... Consent flags arrive as traits named ``<flag>_consent``."""

    event_id: str
    customer_id: str
    occurred_ms: int
    traits: tuple[tuple[str, TraitValue], ...]  # sorted by name
    region: None = None  # profiles carry no region of their own


Event = Order | Visit | Profile


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Input bounds; all of them are settings."""

    max_bytes: int = 64 * 1024
    max_future_ms: int = 5 * 60 * 1000
    max_id_length: int = 200
    max_traits: int = 50  # per profile event
    max_trait_name: int = 64
    max_trait_text: int = 256  # characters of a text value


class _Bad(Exception):
    def __init__(self, reason: Reason, field: str | None, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(reason, field, message)


def parse_event(
    raw: bytes, kind: EventKind | None, *, now_ms: int, limits: ParseLimits
) -> Event | Rejection:
    """Validate one payload. ``kind`` None means: read it from the document's ``type`` field."""
    if len(raw) <= limits.max_bytes:  # else the precise path says: oversized
        try:
            typed = DECODE_ANY(raw) if kind is None else DECODE[kind](raw)
            return _from_typed(typed, now_ms, limits)
        except (msgspec.DecodeError, RecursionError, _Bad):
            pass  # RecursionError: msgspec looking past deep nesting for the "type" tag
    return parse_precisely(raw, kind, now_ms=now_ms, limits=limits)


def parse_precisely(
    raw: bytes, kind: EventKind | None, *, now_ms: int, limits: ParseLimits
) -> Event | Rejection:
    """:func:`parse_event` without the fast path: what it returns for any input, rejections
    included, which only this path writes. Public for the tests that compare the two."""
    if len(raw) > limits.max_bytes:
        return Rejection(
            Reason.OVERSIZED, None, f"payload of {len(raw)} bytes exceeds {limits.max_bytes}"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = Reason.INVALID_UTF8 if "UTF-8" in str(exc) else Reason.INVALID_JSON
        return Rejection(reason, None, str(exc))
    if not isinstance(doc, dict):
        return Rejection(Reason.NOT_AN_OBJECT, None, f"expected a JSON object, got {_kind(doc)}")
    try:
        return _parse_document(doc, kind, now_ms, limits)
    except _Bad as bad:
        return bad.rejection


def _from_typed(doc: Doc, now_ms: int, limits: ParseLimits) -> Event:
    """The event of a document msgspec has type-checked; the value rules still apply and raise
    :class:`_Bad` (the precise path then writes the rejection)."""
    event_id = _checked_id(doc.event_id, "event_id", limits)
    customer_id = _checked_id(doc.customer_id, "customer_id", limits)
    occurred_ms = _checked_time(doc.occurred_at, now_ms, limits)
    if isinstance(doc, VisitDoc):
        return Visit(event_id, customer_id, occurred_ms, doc.action, doc.region)
    if isinstance(doc, OrderDoc):
        amount = _minor_units(doc.amount)
        if doc.order_id is not None:
            _checked_id(doc.order_id, "order_id", limits)
        return Order(
            event_id,
            customer_id,
            occurred_ms,
            amount,
            doc.currency,
            doc.status,
            doc.order_id if doc.order_id is not None else event_id,
            doc.region,
        )
    assert isinstance(doc, ProfileDoc)
    traits: dict[str, TraitValue] = {}
    _add_traits(traits, doc.traits, "traits", limits)
    _add_traits(traits, doc.consent, "consent", limits)
    return Profile(event_id, customer_id, occurred_ms, _sorted_traits(traits, limits))


def _parse_document(
    doc: dict[str, object], kind: EventKind | None, now_ms: int, limits: ParseLimits
) -> Event:
    declared = doc.get("type")
    if kind is None:
        if declared not in ("order", "visit", "profile"):
            raise _Bad(
                Reason.UNKNOWN_TYPE,
                "type",
                f"type must be 'order', 'visit' or 'profile', got {declared!r}",
            )
        kind = "order" if declared == "order" else "profile" if declared == "profile" else "visit"
    elif declared is not None and declared != kind:
        raise _Bad(Reason.UNKNOWN_TYPE, "type", f"type {declared!r} on the {kind} stream")
    event_id = _ident(doc, "event_id", limits)
    customer_id = _ident(doc, "customer_id", limits)
    occurred_ms = _checked_time(_required(doc, "occurred_at", str), now_ms, limits)
    if kind == "order":
        amount = _amount(doc)
        currency = _required(doc, "currency", str)
        if _CURRENCY_TEXT.search(currency) is None:
            raise _Bad(Reason.INVALID_VALUE, "currency", f"not an ISO 4217 code: {currency[:16]!r}")
        status = _required(doc, "status", str)
        if status not in STATUSES:
            raise _Bad(Reason.UNKNOWN_STATUS, "status", f"unknown status {status[:32]!r}")
        order_id = _optional(doc, "order_id", str)
        if order_id is not None:
            order_id = _ident(doc, "order_id", limits)
        items = _optional(doc, "items", int)
        if items is not None and items < 0:
            raise _Bad(Reason.INVALID_VALUE, "items", "items must be >= 0")
        _check_common_optionals(doc)
        return Order(
            event_id,
            customer_id,
            occurred_ms,
            amount,
            currency,
            status,
            order_id if order_id is not None else event_id,
            _optional(doc, "region", str),
        )
    if kind == "profile":
        traits: dict[str, TraitValue] = {}
        _add_traits(traits, _required(doc, "traits", dict), "traits", limits)
        _add_traits(traits, _optional(doc, "consent", dict), "consent", limits)
        return Profile(event_id, customer_id, occurred_ms, _sorted_traits(traits, limits))
    action = _required(doc, "action", str)
    if not action or len(action) > MAX_ACTION:
        raise _Bad(Reason.INVALID_VALUE, "action", f"action must be 1..{MAX_ACTION} characters")
    _check_common_optionals(doc)
    return Visit(event_id, customer_id, occurred_ms, action, _optional(doc, "region", str))


def _add_traits(
    into: dict[str, TraitValue],
    given: Mapping[str, object] | None,
    field: Literal["traits", "consent"],
    limits: ParseLimits,
) -> None:
    """``traits`` (flat: text, numbers, booleans, null to remove) and ``consent`` flags
    (booleans, kept as traits ``<flag>_consent``), within the limits."""
    suffix = "_consent" if field == "consent" else ""
    for key, value in (given or {}).items():
        name = key + suffix
        path = field  # the message names the trait
        if not valid_trait_name(name):
            raise _Bad(Reason.INVALID_VALUE, path, "a trait name is a-z, 0-9 and _")
        if len(name) > limits.max_trait_name:
            raise _Bad(
                Reason.TRAIT_LIMIT, path, f"trait name over {limits.max_trait_name} characters"
            )
        if suffix and not isinstance(value, bool):
            raise _Bad(Reason.WRONG_TYPE, path, f"a consent flag is a boolean, got {_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(Reason.INVALID_VALUE, path, "a number trait must be finite")
        if isinstance(value, str) and len(value) > limits.max_trait_text:
            raise _Bad(Reason.TRAIT_LIMIT, path, f"text over {limits.max_trait_text} characters")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise _Bad(
                Reason.WRONG_TYPE,
                path,
                f"a trait is text, a number, a boolean or null, got {_kind(value)}",
            )
        into[name] = value


def _sorted_traits(
    traits: dict[str, TraitValue], limits: ParseLimits
) -> tuple[tuple[str, TraitValue], ...]:
    if len(traits) > limits.max_traits:
        raise _Bad(
            Reason.TRAIT_LIMIT,
            "traits",
            f"{len(traits)} traits, over the limit of {limits.max_traits}",
        )
    return tuple(sorted(traits.items()))


def _check_common_optionals(doc: dict[str, object]) -> None:
    for name in ("region", "channel"):
        value = _optional(doc, name, str)
        if value is not None and len(value) > MAX_LABEL:
            raise _Bad(Reason.INVALID_VALUE, name, f"{name} longer than {MAX_LABEL} characters")
    _optional(doc, "attributes", dict)


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _required(doc: dict[str, object], name: str, typ: type[T]) -> T:
    value = doc.get(name)
    if value.__class__ is typ:  # the common case, settled in one comparison
        return value
    if value is None:
        raise _Bad(Reason.MISSING_FIELD, name, f"required field {name!r} is missing")
    return _typed(value, name, typ)


def _optional(doc: dict[str, object], name: str, typ: type[T]) -> T | None:
    value = doc.get(name)
    if value is None or value.__class__ is typ:
        return value
    return _typed(value, name, typ)


def _typed(value: object, name: str, typ: type[T]) -> T:
    # bool is an int in Python but not in JSON.
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _Bad(Reason.WRONG_TYPE, name, f"{name} must be {typ.__name__}, got {_kind(value)}")
    return value


def valid_trait_name(name: str) -> bool:
    """a-z first, then a-z, 0-9 and _."""
    return name.isascii() and name[:1].isalpha() and set(name) <= _TRAIT_CHARS


def valid_id(value: str, limits: ParseLimits) -> bool:
    """Whether events may carry this id (1..max_id_length characters): a customer with any
    other id has no state, so an erasure request for one has nothing to erase."""
    return 0 < len(value) <= limits.max_id_length


def _ident(doc: dict[str, object], name: str, limits: ParseLimits) -> str:
    return _checked_id(_required(doc, name, str), name, limits)


def _checked_id(value: str, name: str, limits: ParseLimits) -> str:
    if not valid_id(value, limits):
        raise _Bad(
            Reason.INVALID_VALUE, name, f"{name} must be 1..{limits.max_id_length} characters"
        )
    return value


def _checked_time(text: str, now_ms: int, limits: ParseLimits) -> int:
    try:
        ms = parse_rfc3339(text)
    except (ValueError, OverflowError) as exc:
        raise _Bad(Reason.INVALID_TIMESTAMP, "occurred_at", str(exc)) from None
    if not EARLIEST_MS <= ms < LATEST_MS:  # else a local date of the shop may not exist
        raise _Bad(
            Reason.INVALID_TIMESTAMP,
            "occurred_at",
            f"occurred_at {text!r} is outside 1900-01-01 to 9999-01-01",
        )
    if ms > now_ms + limits.max_future_ms:
        raise _Bad(
            Reason.FUTURE_TIMESTAMP,
            "occurred_at",
            f"occurred_at {text!r} is more than {limits.max_future_ms} ms in the future",
        )
    return ms


def _amount(doc: dict[str, object]) -> int:
    """Amount in minor units (1/100): integers keep sums exact and order-independent."""
    if "amount" not in doc or doc["amount"] is None:
        raise _Bad(Reason.MISSING_FIELD, "amount", "required field 'amount' is missing")
    return _minor_units(doc["amount"])


def _minor_units(value: object) -> int:
    minor = _plain_minor(value)
    if minor is not None:
        if minor > _MAX_MINOR:
            raise _Bad(Reason.INVALID_VALUE, "amount", "amount exceeds 1e12")
        return minor
    if isinstance(value, str):
        whole, dot, frac = value.partition(".")
        if not (whole.isascii() and whole.isdigit()) or (
            dot and not (frac.isascii() and frac.isdigit() and len(frac) <= 2)
        ):
            if value.startswith("-"):
                raise _Bad(Reason.NEGATIVE_AMOUNT, "amount", "amount must be >= 0")
            raise _Bad(
                Reason.INVALID_VALUE, "amount", f"not a decimal with <= 2 places: {value[:32]!r}"
            )
        number = Decimal(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(Reason.INVALID_VALUE, "amount", "amount must be finite")
        try:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:  # pragma: no cover - repr of a finite float always parses
            raise _Bad(Reason.INVALID_VALUE, "amount", "unreadable amount") from None
    else:
        raise _Bad(
            Reason.WRONG_TYPE,
            "amount",
            f"amount must be a number or decimal string, got {_kind(value)}",
        )
    if number < 0:
        raise _Bad(Reason.NEGATIVE_AMOUNT, "amount", "amount must be >= 0")
    if number > MAX_AMOUNT:
        raise _Bad(Reason.INVALID_VALUE, "amount", "amount exceeds 1e12")
    return int((number.quantize(_CENT, rounding=ROUND_HALF_EVEN) * 100).to_integral_value())


def _plain_minor(value: object) -> int | None:
    """Minor units of the common amounts, a non-negative integer or a plain decimal with at
    most two places (text, or a float's shortest repr as Decimal(repr(value)) reads it), with
    no Decimal; None for anything else, which the general path reads or rejects."""
    if value.__class__ is int:
        return value * 100 if value >= 0 else None
    if value.__class__ is float:
        text = repr(value)
    elif value.__class__ is str:
        text = value
    else:
        return None
    whole, dot, frac = text.partition(".")
    if not (whole.isascii() and whole.isdigit()):
        return None
    if dot and not (frac.isascii() and frac.isdigit() and len(frac) <= 2):
        return None
    return int(whole) * 100 + int(frac.ljust(2, "0"))
