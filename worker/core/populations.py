"""Class populations: how many customers each (dimension, class) holds, per input partition.

A customer counts in the class last emitted to subscribers in each dimension
(``CustomerState.classes``), never in one consent withholds (``withheld``), and in the
partition whose keys hold its state: what the commit path's deltas keep (a change moves one
customer from its ``from`` class to its ``to`` class, an erasure takes them out of theirs).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from worker.core.state import CustomerState

Populations = Counter[tuple[str, str]]
"""Customers per (dimension, class)."""


def counted_in(state: CustomerState) -> Iterator[tuple[str, str]]:
    """The (dimension, class) pairs the customer counts in."""
    return ((dim, cls) for dim, cls in state.classes.items() if cls is not None)


@dataclass
class Census:
    """Counts stored states one at a time (a scan's order), each customer once: SCAN may
    return a key twice."""

    partitions: defaultdict[int, Populations] = field(default_factory=lambda: defaultdict(Counter))
    _seen: set[tuple[int, str]] = field(default_factory=set)

    def add(self, partition: int, state: CustomerState) -> None:
        key = (partition, state.customer_id)
        if key not in self._seen:
            self._seen.add(key)
            self.partitions[partition].update(counted_in(state))

    @property
    def customers(self) -> int:
        """Customers counted (readable states, each once)."""
        return len(self._seen)
