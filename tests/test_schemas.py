"""The contracts in schemas/ agree with the core.

The schemas are valid JSON Schema 2020-12 and their examples validate; the parser accepts every
valid input example and rejects every invalid one (schemas/invalid/) with the stored reason and
field, which the schema rejects too wherever a schema can say it; and the output examples are
what the engine and dead_letter() really produce.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from worker.core.changes import SegmentChange
from worker.core.classes import classes_document
from worker.core.deadletter import dead_letter
from worker.core.engine import fire_timer, process_event, reevaluate
from worker.core.events import Event, Order, ParseLimits, Reason, Rejection, Visit, parse_event
from worker.core.rules import default_rules_text, load_rules, parse_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, parse_rfc3339
from worker.tools.simulate import FeedFaults, Simulator

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
CONTRACTS = ("order", "visit", "profile", "segment_change", "dead_letter", "customer_classes")
CASES = {p.stem: json.loads(p.read_text()) for p in sorted((SCHEMAS / "invalid").glob("*.json"))}
NOW = parse_rfc3339("2026-06-01T00:00:00Z")
LIMITS = ParseLimits()
# Size, the clock and byte-level encoding are beyond what a JSON Schema can say.
NOT_IN_SCHEMA = {
    Reason.OVERSIZED,
    Reason.FUTURE_TIMESTAMP,
    Reason.INVALID_JSON,
    Reason.INVALID_UTF8,
    Reason.TRAIT_LIMIT,  # the schema bounds names; counts and text lengths are the worker's
}
# Found after parsing: by the engine (no rate for the currency) or from the Kafka message key.
NOT_FROM_PAYLOAD = {
    Reason.UNSUPPORTED_CURRENCY,
    Reason.MISSING_KEY,
    Reason.KEY_MISMATCH,
    Reason.WRONG_PARTITION,
}
PLACED_RULES = default_rules_text().replace(b'count_status = "paid"', b'count_status = "placed"')


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.v1.json").read_text())


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=FormatChecker())


def examples(*names: str) -> list[Any]:
    return [
        pytest.param(name, example, id=f"{name}-{i}")
        for name in names
        for i, example in enumerate(schema(name)["examples"])
    ]


def invalid_cases(*, in_schema: bool = False) -> list[Any]:
    return [
        pytest.param(case, id=name)
        for name, case in CASES.items()
        if not in_schema or case["reason"] not in NOT_IN_SCHEMA
    ]


def raw_of(case: dict[str, Any]) -> bytes:
    """The bytes of an invalid case; `pad_to_bytes` pads it with attributes.pad to that size."""
    if "raw_base64" in case:
        return base64.b64decode(case["raw_base64"])
    payload = case["payload"]
    if "pad_to_bytes" not in case:
        return orjson.dumps(payload)
    pad = case["pad_to_bytes"] - len(orjson.dumps({**payload, "attributes": {"pad": ""}}))
    raw = orjson.dumps({**payload, "attributes": {"pad": "x" * pad}})
    assert len(raw) == case["pad_to_bytes"]
    return raw


@cache
def run_input_examples() -> tuple[SegmentChange, ...]:
    """The order and visit examples through the engine in event-time order, as replay runs them
    (due timers fire before each event, then up to NOW), then a rules change at NOW that makes
    placed orders count. The segment_change examples are copied from this output."""
    rules = load_rules(None)
    events: list[Event] = []
    for kind in ("order", "visit"):
        for doc in schema(kind)["examples"]:
            event = parse_event(orjson.dumps(doc), kind, now_ms=NOW, limits=LIMITS)
            assert not isinstance(event, Rejection), event
            events.append(event)
    states: dict[str, CustomerState] = {}
    changes: list[SegmentChange] = []

    def catch_up(until_ms: int) -> None:
        for state in states.values():
            while state.due_day is not None and state.due_day * DAY_MS <= until_ms:
                changes.extend(fire_timer(state, rules, state.due_day, state.due_day * DAY_MS))

    for event in sorted(events, key=lambda e: e.occurred_ms):
        catch_up(event.occurred_ms)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        result = process_event(state, event, rules, event.occurred_ms, event.occurred_ms)
        assert not isinstance(result, Rejection), result
        changes.extend(result)
    catch_up(NOW)
    placed_rules = parse_rules(PLACED_RULES, "placed.toml")
    for state in states.values():
        changes.extend(reevaluate(state, placed_rules, NOW, NOW))
    return tuple(changes)


@pytest.mark.parametrize("name", CONTRACTS)
def test_schema_is_valid_2020_12(name: str) -> None:
    contract = schema(name)
    Draft202012Validator.check_schema(contract)
    assert contract["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert contract["$id"] == f"https://segment-worker.dev/schemas/{name}.v1.json"
    assert contract["additionalProperties"] is (name in ("order", "visit", "profile"))
    assert len(contract["examples"]) >= 3


def test_schemas_directory_holds_exactly_the_contracts() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(
        f"{name}.v1.json" for name in CONTRACTS
    )


@pytest.mark.parametrize(("name", "example"), examples(*CONTRACTS))
def test_examples_validate(name: str, example: Any) -> None:
    validator(name).validate(example)


@pytest.mark.parametrize(("kind", "example"), examples("order", "visit"))
def test_core_accepts_valid_input_examples(kind: Any, example: dict[str, Any]) -> None:
    event = parse_event(orjson.dumps(example), kind, now_ms=NOW, limits=LIMITS)
    assert not isinstance(event, Rejection), event
    occurred_ms = int(datetime.fromisoformat(example["occurred_at"]).timestamp() * 1000)
    assert (event.event_id, event.customer_id, event.occurred_ms, event.region) == (
        example["event_id"],
        example["customer_id"],
        occurred_ms,
        example.get("region"),
    )
    if kind == "order":
        assert isinstance(event, Order)
        assert event.amount_minor == Decimal(str(example["amount"])) * 100
        assert (event.currency, event.status, event.order_id) == (
            example["currency"],
            example["status"],
            example.get("order_id") or example["event_id"],
        )
    else:
        assert isinstance(event, Visit)
        assert event.action == example["action"]
    if "type" in example:  # replay files: the type field alone picks the contract
        assert parse_event(orjson.dumps(example), None, now_ms=NOW, limits=LIMITS) == event


@pytest.mark.parametrize("case", invalid_cases())
def test_core_rejects_invalid_examples_with_reason_and_field(case: dict[str, Any]) -> None:
    result = parse_event(raw_of(case), case["kind"], now_ms=NOW, limits=LIMITS)
    assert isinstance(result, Rejection), result
    assert (result.reason.value, result.field) == (case["reason"], case["field"])


def _blamed_field(error: ValidationError) -> str | None:
    if error.validator == "required":
        return str(error.message.split("'")[1])
    return str(error.absolute_path[0]) if error.absolute_path else None


@pytest.mark.parametrize("case", invalid_cases(in_schema=True))
def test_schema_rejects_invalid_examples_for_the_same_field(case: dict[str, Any]) -> None:
    errors = list(validator(case["kind"]).iter_errors(case["payload"]))
    assert errors, "the schema accepts a payload the parser rejects"
    assert {_blamed_field(e) for e in errors} == {case["field"]}


def test_every_payload_reason_has_an_invalid_example() -> None:
    covered = {case["reason"] for case in CASES.values()}
    assert covered == {reason.value for reason in Reason} - NOT_FROM_PAYLOAD


def test_engine_output_validates_against_segment_change() -> None:
    changes = run_input_examples()
    assert {c.cause.type for c in changes} == {"order", "visit", "timer", "rules_change"}
    assert any(c.from_class is None for c in changes)
    assert any(c.to_class is None for c in changes)
    contract = validator("segment_change")
    for change in changes:
        contract.validate(orjson.loads(change.to_json()))


@pytest.mark.parametrize(("name", "example"), examples("segment_change"))
def test_segment_change_examples_are_engine_output(name: str, example: dict[str, Any]) -> None:
    assert example in [change.to_dict() for change in run_input_examples()]


@pytest.mark.parametrize(("name", "example"), examples("dead_letter"))
def test_dead_letter_examples_are_real_records(name: str, example: dict[str, Any]) -> None:
    raw = example["raw"].encode()
    result = parse_event(raw, None, now_ms=NOW, limits=LIMITS)
    if not isinstance(result, Rejection):  # rejected by the engine: a currency with no rate
        state = CustomerState(result.customer_id)
        result = process_event(state, result, load_rules(None), NOW, NOW)
    assert isinstance(result, Rejection)
    assert dead_letter(result, raw, example["source"], example["stage"]) == example


def test_customer_classes_examples_are_where_the_changes_left_each_customer() -> None:
    """A subscriber folding the change topic (last `to` per dimension, entered at its
    `occurred_at`) reaches the classes documents the examples show."""
    folded: dict[str, dict[str, dict[str, str]]] = {}
    for change in run_input_examples():
        classes = folded.setdefault(change.customer_id, {})
        if change.to_class is None:
            classes.pop(change.dimension, None)
        else:
            since = change.to_dict()["occurred_at"]
            classes[change.dimension] = {"class": change.to_class, "since": str(since)}
    assert schema("customer_classes")["examples"] == [
        {"customer_id": cid, "classes": dict(sorted(classes.items()))}
        for cid, classes in folded.items()
    ]


@pytest.mark.parametrize(
    ("name", "example"), examples("segment_change", "dead_letter", "customer_classes")
)
def test_output_schemas_are_closed(name: str, example: dict[str, Any]) -> None:
    contract = validator(name)
    assert not contract.is_valid({**example, "unexpected": 1})
    for field in example:
        assert not contract.is_valid({k: v for k, v in example.items() if k != field}), field
    if name == "segment_change":
        assert not contract.is_valid({**example, "state": {**example["state"], "unexpected": 1}})
    if name == "customer_classes":
        dim, entry = next(iter(example["classes"].items()))
        for broken in ({**entry, "unexpected": 1}, {"class": entry["class"]}, {"class": "Gold"}):
            assert not contract.is_valid({**example, "classes": {dim: broken}}), broken


@pytest.mark.parametrize(
    ("cause_type", "event_id"), [("timer", "ev-1"), ("order", None), ("rules_change", "ev-1")]
)
def test_segment_change_cause_event_id_matches_its_type(cause_type: str, event_id: Any) -> None:
    example = schema("segment_change")["examples"][0]
    cause = {"type": cause_type, "event_id": event_id}
    assert not validator("segment_change").is_valid({**example, "cause": cause})


def test_simulated_run_output_matches_the_output_contracts() -> None:
    """Changes, dead letters and classes documents from a simulated feed with malformed
    input validate."""
    rules = load_rules(None)
    changes, dead = validator("segment_change"), validator("dead_letter")
    published = validator("customer_classes")
    states: dict[str, CustomerState] = {}
    sim = Simulator(3, 100, NOW - 200 * DAY_MS, faults=FeedFaults(malformed=0.05))
    checked = rejected = 0
    for n, sim_event in zip(range(3000), sim, strict=False):
        raw = sim_event.jsonl()
        event = parse_event(raw, None, now_ms=NOW, limits=LIMITS)
        if isinstance(event, Rejection):
            dead.validate(dead_letter(event, raw, {"file": "sim.jsonl", "line": n + 1}, "parse"))
            rejected += 1
            continue
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        result = process_event(state, event, rules, event.occurred_ms, event.occurred_ms)
        assert not isinstance(result, Rejection), result
        if state.due_day is not None and n % 7 == 0:
            result += fire_timer(state, rules, state.due_day, state.due_day * DAY_MS)
        for change in result:
            changes.validate(orjson.loads(change.to_json()))
            checked += 1
    assert checked > 500
    assert rejected > 50
    for state in states.values():
        published.validate(classes_document(state))


def test_the_dead_letter_schema_names_every_reason_code_the_worker_sends() -> None:
    assert schema("dead_letter")["properties"]["reason"]["enum"] == [r.value for r in Reason]
