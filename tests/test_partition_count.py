"""The partition count a state is built with: inferred from the claimed partitions, recorded
once, compared with the topics' (worker/partition_count.py). No servers: a store that keeps
its keys in a dict."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest

from worker.keys import Layout
from worker.partition_count import (
    PROBE_STEP,
    Built,
    Guard,
    PartitionCountChanged,
    check,
    inferred,
    refusal,
    settle,
    state_count,
)
from worker.store import DamagedRecord, Store


class FakeStore:
    """What partition_count asks of a Store: the record, and which partitions are claimed."""

    def __init__(self, claimed: Sequence[int] = (), record: int | None = None) -> None:
        self.keys = Layout("sw")
        self.claimed = set(claimed)
        self.record = record
        self.asked: list[range] = []
        self.writes = 0

    async def recorded_partitions(self) -> int | None:
        return self.record

    async def record_partitions(self, count: int) -> int:
        self.writes += 1
        if self.record is None:
            self.record = count
        return self.record

    async def claimed_among(self, partitions: Sequence[int]) -> set[int]:
        self.asked.append(cast(range, partitions))
        return self.claimed & set(partitions)


def store(claimed: Sequence[int] = (), record: int | None = None) -> FakeStore:
    return FakeStore(claimed, record)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_the_count_of_a_state_is_its_highest_claimed_partition_plus_one() -> None:
    assert inferred(set()) is None
    assert inferred({0, 1, 2, 3}) == 4
    assert inferred({0, 2, 3}) == 4  # a claim cut short on the first run leaves a gap
    assert inferred({0, 1}) == 2  # partitions added that no worker took yet: still the old count


def test_refusal_names_both_counts_the_prefix_and_what_to_do() -> None:
    assert refusal(4, None, "sw") is None
    assert refusal(4, Built(4, recorded=True), "sw") is None
    refused = refusal(6, Built(4, recorded=True), "shop")
    assert refused is not None
    text = str(refused)
    assert text.startswith(
        "SEGMENT_WORKER_TOPIC_*: the input topics have 6 partitions, but the state in Redis "
        "under SEGMENT_WORKER_REDIS_PREFIX 'shop' is built with 4 (recorded in "
        "'shop:partitions')"
    )
    assert "go back to input topics of 4 partitions (new ones" in text
    assert "keep 6 and rebuild the state under a new SEGMENT_WORKER_REDIS_PREFIX" in text
    assert "docs/sizing.md#changing-the-partition-count" in text
    assert "\n" not in text
    inferred_one = str(refusal(6, Built(4, recorded=False), "sw"))
    assert "(inferred from its partitions' meta hashes; 'sw:partitions' holds no count" in (
        inferred_one
    )
    given = str(refusal(6, Built(4, recorded=True), "sw", "--partitions"))
    assert given.startswith("--partitions 6: the state in Redis")
    assert given.endswith("give --partitions 4")


def test_an_empty_redis_gets_the_topics_count_recorded() -> None:
    fresh = store()
    assert run(settle(cast(Store, fresh), 4)) == Built(4, recorded=True)
    assert fresh.record == 4


def test_a_recorded_count_is_kept_and_another_is_refused_without_a_write() -> None:
    recorded = store(range(4), record=4)
    assert run(settle(cast(Store, recorded), 4)) == Built(4, recorded=True)
    assert recorded.asked == []  # the record answers: no meta hash is asked about
    with pytest.raises(PartitionCountChanged) as refused:
        run(settle(cast(Store, recorded), 6))
    assert (refused.value.count, refused.value.built) == (6, Built(4, recorded=True))
    assert recorded.writes == 0 and recorded.record == 4


def test_a_state_from_before_the_record_is_inferred_then_recorded_if_it_agrees() -> None:
    older = store(range(4))
    assert run(settle(cast(Store, older), 4)) == Built(4, recorded=True)
    assert older.record == 4
    assert older.asked == [range(5)]  # 0..count, one pipeline


@pytest.mark.parametrize("topics", [2, 6])
def test_a_state_from_before_the_record_of_another_count_is_refused_and_nothing_recorded(
    topics: int,
) -> None:
    older = store(range(4))
    with pytest.raises(PartitionCountChanged) as refused:
        run(settle(cast(Store, older), topics))
    assert refused.value.built == Built(4, recorded=False)
    assert older.writes == 0 and older.record is None


def test_a_state_of_many_more_partitions_is_counted_by_asking_further() -> None:
    big = store(range(600))
    assert run(state_count(cast(Store, big), 4)) == Built(600, recorded=False)
    assert big.asked == [
        range(5),
        range(5, 5 + PROBE_STEP),
        range(5 + PROBE_STEP, 5 + 2 * PROBE_STEP),
        range(5 + 2 * PROBE_STEP, 5 + 3 * PROBE_STEP),
    ]


def test_check_reads_only() -> None:
    fresh, older = store(), store(range(4))
    assert run(check(cast(Store, fresh), 4)) is None
    assert run(check(cast(Store, older), 4)) == Built(4, recorded=False)
    with pytest.raises(PartitionCountChanged):
        run(check(cast(Store, older), 6))
    assert fresh.writes == older.writes == 0


def test_of_two_workers_recording_at_once_the_first_wins_and_the_other_is_refused() -> None:
    racing = store()

    async def other_worker_records_first(count: int) -> int:
        racing.record = 6 if racing.record is None else racing.record
        return racing.record

    racing.record_partitions = other_worker_records_first  # type: ignore[method-assign]
    with pytest.raises(PartitionCountChanged) as refused:
        run(settle(cast(Store, racing), 4))
    assert refused.value.built == Built(6, recorded=True)


def test_the_guard_settles_once_then_compares_every_count() -> None:
    fresh = store()
    guard = Guard(cast(Store, fresh))
    guard.check_known(6)  # nothing settled yet: nothing to compare with
    run(guard.check(4))
    run(guard.check(4))
    assert fresh.writes == 1
    guard.check_known(4)
    guard.check_known(None)  # the metadata does not know the topics (yet)
    with pytest.raises(PartitionCountChanged):
        guard.check_known(6)
    with pytest.raises(PartitionCountChanged):
        run(guard.check(6))


class RecordOnly:
    """A Store's record methods over one value, as Redis would answer GET."""

    def __init__(self, value: bytes | None) -> None:
        self.value = value

    async def get(self, _key: str) -> bytes | None:
        return self.value


@pytest.mark.parametrize("value", [b"", b"x", b"0", b"-4", b"4.0", b"\xff"])
def test_a_record_that_is_not_a_count_is_named(value: bytes) -> None:
    damaged = Store.__new__(Store)
    damaged.client = RecordOnly(value)  # type: ignore[assignment]
    damaged.keys = Layout("sw")
    with pytest.raises(DamagedRecord, match="'sw:partitions' holds"):
        run(damaged.recorded_partitions())
