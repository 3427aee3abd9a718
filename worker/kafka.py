"""Everything Kafka-specific that is not the hot path: how a customer maps to a partition.

The worker keeps one customer's state under the input partition the record arrived on, so
every producer of input topics and every lookup must agree on this mapping.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_of(customer_id: str, partitions: int) -> int:
    """Kafka's default (Java) partitioner, so lookups find the partition the producer chose."""
    return int(murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions
