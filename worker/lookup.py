"""One customer's stored state as the HTTP API (``GET /customers/{id}``) and
``segment-worker customer`` show it: the same document from both, read from Redis."""

from __future__ import annotations

from worker.core.codec import decode_state
from worker.core.rules import Rules
from worker.core.views import describe
from worker.live import partition_of
from worker.store import Store


async def look_up(
    store: Store, rules: Rules, partitions: int, customer_id: str, day: int
) -> dict[str, object] | None:
    """The customer's statistics, classes and next change, with features at ``day``; None for
    a customer Redis does not hold. Raises CorruptRecord for a state that cannot be read."""
    partition = partition_of(customer_id, partitions)
    blob = await store.get(partition, customer_id)
    if blob is None:
        return None
    body = describe(decode_state(customer_id, blob), rules, day)
    body["partition"] = partition
    return body
