"""``segment-worker redis recount``: rebuild each partition's class population counts from the
stored customer states, for counts that drifted (a release before the fix of Counter addition
dropped every decrement, so its counts only grew).

Safe beside running workers, without stopping them: the counts of a partition are read with
its ``writes`` counter (bumped by every commit and erasure) and the server's run id, the
states are scanned and counted, and the rewrite is one Function call that replaces the counts
only if neither changed meanwhile: no state changed while they were counted, and every commit
since adds its delta to the true count. A partition written meanwhile is left as it was and
named; the recount is run again (at a quiet time, or with the workers stopped). The one
thing it cannot see is an erasure half done: its state deleted, its classes not yet subtracted
(the next call); docs/operations-and-guarantees.md ("Recounting the class populations").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from worker.core.codec import decode_state
from worker.core.packing import CorruptRecord
from worker.core.populations import Census, Populations
from worker.progress import Progress
from worker.store import Store


@dataclass
class Recount:
    """What a recount found and did: counts before and after, per partition rewritten."""

    before: dict[int, Populations] = field(default_factory=dict)
    after: dict[int, Populations] = field(default_factory=dict)
    changed: list[int] = field(default_factory=list)  # written meanwhile: left as they were
    unreadable: list[str] = field(default_factory=list)  # customers whose state did not decode
    customers: int = 0  # counted, each once

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per dimension, customers in one of its classes before and after, over the
        partitions rewritten."""
        before, after = _by_dimension(self.before), _by_dimension(self.after)
        return {d: (before[d], after[d]) for d in sorted(before.keys() | after.keys())}


def _by_dimension(counts: dict[int, Populations]) -> Counter[str]:
    """Customers in a class of each dimension, over the partitions."""
    out: Counter[str] = Counter()
    for populations in counts.values():
        for (dimension, _), n in populations.items():
            out[dimension] += n
    return out


async def recount(store: Store, progress: Progress) -> Recount:
    """Count the classes of every stored state per partition and rewrite the counts of each
    partition that no worker wrote to meanwhile."""
    seen = {p: await store.counts(p) for p in await store.claimed_partitions()}
    census, report, scanned = Census(), Recount(), 0
    async for batch in store.every_state():
        for partition, customer_id, blob in batch:
            scanned += 1
            try:
                census.add(partition, decode_state(customer_id, blob))
            except CorruptRecord:
                report.unreadable.append(customer_id)
        progress.update(scanned, scanned)
    report.customers = census.customers
    # A partition first claimed during the scan has no counts read before it: run again.
    report.changed = sorted(set(census.partitions) - set(seen))
    for partition, counts in seen.items():
        true = census.partitions.get(partition, Counter())
        if await store.rewrite_populations(partition, counts, true):
            report.before[partition] = Counter(counts.populations)
            report.after[partition] = true
        else:
            report.changed.append(partition)
    return report
