"""Customers' stored states for operators: the document the HTTP API (``GET
/customers/{id}``) and ``segment-worker customer`` show, and ``segment-worker forget`` for a
damaged state that stops its partition."""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

import orjson

from worker.core.codec import FORMAT, declared_format, decode_state
from worker.core.packing import CorruptRecord
from worker.core.views import Show
from worker.kafka import partition_of
from worker.store import Store


async def look_up(
    store: Store, partitions: int, customer_id: str, show: Show
) -> dict[str, object] | None:
    """The customer's state as ``show`` shows it (views.py), with its partition; None for a
    customer Redis does not hold. Raises CorruptRecord for a state that cannot be read."""
    partition = partition_of(customer_id, partitions)
    blob = await store.get(partition, customer_id)
    if blob is None:
        return None
    body = show(decode_state(customer_id, blob))
    body["partition"] = partition
    return body


async def print_customers(
    store: Store, customer_ids: Sequence[str], partitions: int, show: Show
) -> int:
    """One JSON line per known customer; 1 if any is unknown or unreadable (said on stderr)."""
    status = 0
    for customer_id in customer_ids:
        try:
            body = await look_up(store, partitions, customer_id, show)
        except CorruptRecord as exc:
            print(f"segment-worker: {exc}", file=sys.stderr)
            status = 1
            continue
        if body is None:
            print(f"segment-worker: unknown customer {customer_id!r}", file=sys.stderr)
            status = 1
            continue
        sys.stdout.buffer.write(orjson.dumps(body) + b"\n")
    return status


async def forget(store: Store, customer_ids: Sequence[str], partitions: int) -> int:
    """Delete damaged states (their due entries go when due); 1 if any customer was left as it was,
    with the reason on stderr."""
    status = 0
    for customer_id in customer_ids:
        partition = partition_of(customer_id, partitions)
        stored = await store.stored(partition, customer_id)
        refusal = _refusal(store, customer_id, stored)
        if refusal is None and stored is not None:
            if await store.forget(partition, customer_id, stored):
                print(
                    f"forgot {customer_id!r}: its damaged state is deleted (partition {partition})"
                )
                continue
            refusal = "its state changed while being checked; nothing deleted"
        print(f"segment-worker: {customer_id!r}: {refusal}", file=sys.stderr)
        status = 1
    return status


def _refusal(store: Store, customer_id: str, stored: bytes | None) -> str | None:
    """Why a customer's state must not be forgotten; None for a damaged one."""
    if stored is None:
        return "unknown customer"
    try:
        blob = store.names.unwrap(stored)[1]
    except (struct.error, UnicodeDecodeError):
        return None  # damaged before the state even starts
    try:
        decode_state(customer_id, blob)
    except CorruptRecord:
        found = declared_format(blob)
        if found is not None and found > FORMAT:
            return (
                f"its state is in format {found}, which a newer release writes: finish rolling "
                "that release out instead"
            )
        return None
    return "its state reads fine; `segment-worker erase` removes a customer"
