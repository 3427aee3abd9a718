"""Counting class populations from stored states (what `redis recount` writes): pure, no
servers."""

from collections import Counter

from tests.core.batching import Live, in_batches, records
from worker.core.codec import decode_state
from worker.core.populations import Census
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS


def test_counts_the_classes_emitted_per_partition_each_customer_once() -> None:
    census = Census()
    census.add(0, CustomerState("a", classes={"value": "gold", "region": None}))
    # b's consent withholds a move to gold: subscribers, and the counts, still know silver
    census.add(0, CustomerState("b", classes={"value": "silver"}, withheld={"value": "gold"}))
    census.add(0, CustomerState("a", classes={"value": "gold"}))  # SCAN returned a twice
    census.add(1, CustomerState("a", classes={"value": "gold"}))  # another partition's "a"
    census.add(1, CustomerState("c"))  # no class yet
    assert census.partitions == {
        0: {("value", "gold"): 1, ("value", "silver"): 1},
        1: {("value", "gold"): 1},
    }
    assert census.customers == 4


class Summing(Live):
    """The worker's loop, adding up the population deltas its commits would apply."""

    def __init__(self) -> None:
        super().__init__()
        self.deltas: Counter[tuple[str, str]] = Counter()
        self.left = 0  # customers who left a class

    def store(self, outcome) -> None:  # type: ignore[no-untyped-def]
        super().store(outcome)
        deltas = outcome.population_deltas()
        self.deltas.update(deltas)
        self.left -= sum(n for n in deltas.values() if n < 0)


def test_the_count_of_the_states_equals_the_sum_of_the_commits_deltas() -> None:
    live = Summing()
    clock = 0
    for chunk, _, clock in in_batches(records(3_000), 50):
        live.run(chunk, clock)
        live.sweep(clock)
    live.sweep(clock + 400 * DAY_MS)  # classes that lapse with time move too
    census = Census()
    for cid, blob in live.redis.items():
        census.add(0, decode_state(cid, blob))
    assert live.left > 100  # the decrements matter
    assert {k: n for k, n in live.deltas.items() if n} == census.partitions[0]
