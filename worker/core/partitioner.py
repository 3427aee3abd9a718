"""Which input partition a customer belongs to: Kafka's default (Java) partitioner.

The worker keeps a customer's state under the partition a record arrived on, and lookups and
erasures compute that partition from the id, so the producers of the input topics must
partition the same way (murmur2 of the key; docs/contracts.md says how to set each client).
Here and not in the Kafka adapter so that the core can refuse a record that came on another
partition.
"""

from __future__ import annotations

from functools import lru_cache
from struct import unpack_from
from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (``Utils.murmur2``), unsigned 32 bits."""
    length = len(data)
    h = _SEED ^ length
    tail = length & ~3
    for word in unpack_from(f"<{tail >> 2}I", data):  # every whole 4-byte word at once
        k = (word * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length - tail
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=1 << 16)  # checked for every input record: ~2 us a hash, ~0.1 a hit
def partition_of(customer_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for the key ``customer_id``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions
