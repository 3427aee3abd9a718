"""The current classes of one customer as a record of the compacted classes topic
(customer_classes.v1): key customer_id, value the classes and when each was entered, null
(a tombstone) once the customer is erased.

The value is a function of the customer's state alone, so the worker, replay and a test
build the same bytes, and a re-relayed duplicate is identical. Compaction keeps the newest
record per key: reading the topic from the beginning rebuilds every customer's classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from worker.core.outbox import OutRecord
from worker.core.state import CustomerState
from worker.core.timeutil import format_ms

ERASED_HEADER = ("erased", b"true")


def classes_document(state: CustomerState) -> dict[str, object]:
    """``{customer_id, classes: {dimension: {class, since}}}``; a dimension that does not
    apply to the customer (no class) is left out."""
    classes: dict[str, object] = {}
    for dimension, cls in sorted(state.classes.items()):
        if cls is not None:
            since = state.since_ms.get(dimension)
            classes[dimension] = {
                "class": cls,
                "since": None if since is None else format_ms(since),
            }
    return {"customer_id": state.customer_id, "classes": classes}


def classes_record(topic: str, state: CustomerState) -> OutRecord:
    """The record that replaces the customer's previous one once the topic is compacted."""
    return OutRecord(topic, state.customer_id.encode(), orjson.dumps(classes_document(state)))


def classes_tombstone(topic: str, key: bytes) -> OutRecord:
    """Null value: compaction then removes every earlier record of the erased customer."""
    return OutRecord(topic, key, None, (ERASED_HEADER,))


def snapshots(
    topic: str, states: dict[str, CustomerState], customer_ids: Iterable[str]
) -> list[OutRecord]:
    """One record per customer (first-seen order), with the state after the whole batch: a
    batch that moves a customer's classes several times publishes where they ended."""
    return [classes_record(topic, states[cid]) for cid in dict.fromkeys(customer_ids)]
