"""After Redis lost writes, the change topic knows better: the changes subscribers already saw
decide each customer's classes again, and the input offsets stamped on them tell how far the
lost window went.

Anyone who can write to the change topic could steer that, so a record read back is trusted
only if it passes :func:`check`: signed by the worker (HMAC over the partition, key, value and
input stamp) when a signing key is set, and in any case well formed, with its event id
recomputed, and input offsets no further than the input's end.

Pure: the live worker reads the change topic back and the customers' states, and commits the
outcome (classes, population deltas) in one fenced write.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from worker.core.batch import Outcome
from worker.core.changes import Cause
from worker.core.changes import change_id as compute_change_id
from worker.core.classes import snapshots
from worker.core.outbox import OutRecord
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339

INPUT_HEADER: Final = "sw.input"  # on change records: input offsets reached, as JSON
MAC_HEADER: Final = "sw.mac"  # on change records: HMAC-SHA256 (hex) when a signing key is set
_MAC_CONTEXT: Final = b"segment-worker change v1"
_NAME: Final = re.compile(r"[a-z0-9_]+")
_INSTANT: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_RULES_VERSION: Final = re.compile(r"sha256:[0-9a-f]{16}")
_EVENT_ID: Final = re.compile(r"[0-9a-f]{32}")
CAUSES: Final = frozenset({"order", "visit", "timer", "rules_change"})


class Emitted(NamedTuple):
    """A change record read back from the change topic."""

    event_id: str
    doc: dict[str, Any]
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class LostWindow:
    """The changes Kafka holds that Redis has no record of, and the input offsets (per topic)
    that the last of them had reached: input is absorbed unclassified until there."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    until: dict[str, int] = field(default_factory=dict)

    def ahead_of(self, offsets: Mapping[str, int]) -> bool:
        """Whether the lost window reaches past the input offsets Redis holds."""
        return any(offsets.get(topic, 0) < o for topic, o in self.until.items())

    def customers(self) -> list[str]:
        return sorted({str(doc["customer_id"]) for doc in self.changes})


def sign(key: bytes, partition: int, record_key: bytes | None, value: bytes, stamp: bytes) -> bytes:
    """The ``sw.mac`` header of a change record: HMAC-SHA256 over the change topic's partition,
    the record's key, value and ``sw.input`` stamp, each length-prefixed (no two records share
    a message), so a record copied to another partition or re-stamped does not verify."""
    mac = hmac.new(key, _MAC_CONTEXT, hashlib.sha256)
    for part in (str(partition).encode(), record_key or b"", value, stamp):
        mac.update(b"%d:" % len(part))
        mac.update(part)
    return mac.hexdigest().encode()


@dataclass(frozen=True, slots=True)
class Trust:
    """What a change record read back from one partition is checked against.

    ``keys``: the signing keys (current first, then previous ones, for a rotation); when any
    is set only records signed with one of them count. Without a key a forger who copies a
    genuine record's shape is not stopped, so the unsigned mode adds what can be checked:
    the rules version is one the partition knows (``rules_versions``) and the customer
    belongs to the partition (``belongs``)."""

    partition: int
    input_ends: Mapping[str, int]  # input topic -> its end offset in this partition
    keys: tuple[bytes, ...] = ()
    rules_versions: frozenset[str] = frozenset()
    belongs: Callable[[str], bool] = field(default=lambda _customer: True)


class ReadBack(NamedTuple):
    emitted: list[Emitted]
    rejected: Counter[str]  # reason -> records skipped


def read_back(
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]],
    trust: Trust,
) -> ReadBack:
    """The change records (key, value, headers) read back from the change topic that pass
    :func:`check`; the others are skipped and counted by reason, never raised: one bad record
    must not stop a take-over. Tombstones are skipped: re-reading the erasure request repeats
    the erasure."""
    out = ReadBack([], Counter())
    for key, value, headers in records:
        if value is None:
            continue
        checked = check(key, value, headers, trust)
        if isinstance(checked, str):
            out.rejected[checked] += 1
        else:
            out.emitted.append(checked)
    return out


def check(
    key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]], trust: Trust
) -> Emitted | str:
    """The record as an :class:`Emitted` if it is trusted, else the reason it is not."""
    stamps = [v for name, v in headers if name == INPUT_HEADER]
    if len(stamps) != 1:
        return "bad_input_header"
    if trust.keys:
        macs = [v for name, v in headers if name == MAC_HEADER]
        if len(macs) != 1:
            return "not_signed"
        if not any(
            hmac.compare_digest(macs[0], sign(k, trust.partition, key, value, stamps[0]))
            for k in trust.keys
        ):
            return "bad_signature"
    try:
        doc = orjson.loads(value)
        reached = orjson.loads(stamps[0])
    except orjson.JSONDecodeError:
        return "not_json"
    reason = _document_problem(doc) or _stamp_problem(reached, trust.input_ends)
    if reason is not None:
        return reason
    if key != doc["customer_id"].encode():
        return "wrong_key"
    if not trust.keys:
        if doc["rules_version"] not in trust.rules_versions:
            return "unknown_rules"
        if not trust.belongs(doc["customer_id"]):
            return "wrong_partition"
    return Emitted(doc["event_id"], doc, headers)


def _is_name(value: object, *, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _document_problem(doc: object) -> str | None:
    """Why ``doc`` is not a segment_change.v1 document this worker could have emitted (the
    fields reconciling reads, and the event id its cause and transition determine)."""
    if not isinstance(doc, dict):
        return "bad_document"
    cause = doc.get("cause")
    customer, occurred = doc.get("customer_id"), doc.get("occurred_at")
    if not (
        isinstance(doc.get("event_id"), str)
        and _EVENT_ID.fullmatch(doc["event_id"])
        and isinstance(customer, str)
        and 1 <= len(customer) <= 200
        and _is_name(doc.get("dimension"))
        and _is_name(doc.get("from", 0), optional=True)
        and _is_name(doc.get("to", 0), optional=True)
        and isinstance(occurred, str)
        and _INSTANT.fullmatch(occurred)
        and isinstance(doc.get("rules_version"), str)
        and _RULES_VERSION.fullmatch(doc["rules_version"])
        and isinstance(cause, dict)
        and cause.get("type") in CAUSES
        and isinstance(cause.get("event_id", 0), str | None)
    ):
        return "bad_document"
    try:
        at = parse_rfc3339(occurred)
    except ValueError:
        return "bad_document"
    expected = compute_change_id(
        customer,
        doc["dimension"],
        Cause(cause["type"], cause["event_id"], at),
        doc["from"],
        doc["to"],
    )
    return None if expected == doc["event_id"] else "wrong_event_id"


def _stamp_problem(reached: object, input_ends: Mapping[str, int]) -> str | None:
    """Why the ``sw.input`` stamp cannot be one this partition's input reached: it names a
    topic the worker does not read, or an offset past the input's end (it would hold the
    partition in recovery, waiting for input that never comes)."""
    if not isinstance(reached, dict) or not all(
        topic in input_ends and type(offset) is int and offset >= 0
        for topic, offset in reached.items()
    ):
        return "bad_input_header"
    if any(offset > input_ends[topic] for topic, offset in reached.items()):
        return "offsets_ahead"
    return None


def change_id(record: OutRecord, changes_topic: str) -> str | None:
    """The event id of an outbox record if it is a change (not a tombstone, not a dead letter)."""
    if record.topic != changes_topic or record.value is None:
        return None
    return str(orjson.loads(record.value)["event_id"])


def lost_window(
    emitted: Iterable[Emitted], outbox: Iterable[OutRecord], changes_topic: str
) -> LostWindow:
    """The read-back changes that neither Redis's state nor its outbox knows about."""
    known = {change_id(r, changes_topic) for r in outbox}
    lost = LostWindow()
    for change in emitted:
        if change.event_id in known:
            continue
        lost.changes.append(change.doc)
        for name, value in change.headers:
            if name == INPUT_HEADER:
                for topic, offset in orjson.loads(value).items():
                    lost.until[topic] = max(lost.until.get(topic, 0), offset)
    return lost


def reconcile(
    lost: Sequence[Mapping[str, Any]],
    states: Mapping[str, CustomerState | None],
    classes_topic: str,
) -> Outcome:
    """Set each customer's classes to the last lost change of theirs, following each chain from
    the class Redis holds: a change whose ``from`` is not the current class (a zombie's late
    re-send of an older change) is no continuation. Re-reading the input then continues each
    chain from what subscribers saw. The outcome holds the touched states (updated in place),
    the population deltas and the moved customers' records for the classes topic (which may
    have missed them if Redis lost their outbox before the relay)."""
    current: dict[tuple[str, str], tuple[str | None, int]] = {}
    for doc in lost:
        key = (doc["customer_id"], doc["dimension"])
        state = states.get(key[0])
        held = current.get(key, (state.classes.get(key[1]) if state else None, 0))[0]
        if doc["from"] == held:
            current[key] = (doc["to"], parse_rfc3339(doc["occurred_at"]))
    outcome = Outcome()
    for (cid, dim), (to, at) in current.items():
        state = outcome.states.get(cid) or states.get(cid) or CustomerState(cid)
        old = state.classes.get(dim)
        if old == to:
            continue
        if old is not None:
            outcome.population[(dim, old)] -= 1
        if to is not None:
            outcome.population[(dim, to)] += 1
            state.classes[dim] = to
            state.since_ms[dim] = at
        else:
            state.classes.pop(dim, None)
            state.since_ms.pop(dim, None)
        outcome.states[cid] = state
    outcome.out += snapshots(classes_topic, outcome.states, outcome.states)
    return outcome
