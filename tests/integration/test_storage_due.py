"""The live worker's bookkeeping of the due index against a real redis-server: a commit takes
each customer out of the bucket of the state it read, a sweep's commit out of the bucket it
found the customer in, an erasure out of its bucket; nothing is left behind, even for
instants still to come (which no sweep would ever clean up)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.integration.live_support import due_index
from worker.core.batch import Outcome
from worker.core.codec import encode_state
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.keys import Layout
from worker.live.partitions import Partitions
from worker.live.retry import Health
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.store import Store

pytestmark = pytest.mark.integration
RULES = load_rules(None)
DAY = 20_600  # a day number (2026-05-26): due days after it are still to come in any test


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def _due(*states: CustomerState) -> Outcome:
    return Outcome(states={s.customer_id: s for s in states})


def _at(day: int) -> int:
    return RULES.calendar.start_ms(day)


async def test_commits_move_customers_between_buckets_and_leave_nothing_behind(
    client: aioredis.Redis,
) -> None:
    store = Store(client)
    await store.library.ensure()
    metrics = Metrics()
    partitions = Partitions()
    storage = Storage(store, partitions, Health(metrics), metrics, lambda: RULES.calendar)
    claim = await store.claim(0)
    partitions.took(0, claim)
    layout = Layout()

    first = [CustomerState(c) for c in ("a", "b", "c")]
    for state, day in zip(first, (DAY + 1, DAY + 1, DAY + 2), strict=True):
        state.due_day = day
    assert await storage.commit(claim, _due(*first))
    assert await due_index(client, layout, 0) == {_at(DAY + 1): {"a", "b"}, _at(DAY + 2): {"c"}}

    # A batch reads them, moves a on, takes b off the index, leaves c where it is.
    states, _ = await storage.read(0, ["a", "b", "c"])
    a, b, c = (states[k] for k in "abc")
    assert a is not None and b is not None and c is not None
    a.due_day, b.due_day = DAY + 3, None
    assert await storage.commit(claim, _due(a, b, c))
    assert await due_index(client, layout, 0) == {_at(DAY + 2): {"c"}, _at(DAY + 3): {"a"}}

    # A commit of states it did not read again (the partition's next batch, same customers)
    # knows where its own last commit put them.
    a.due_day = DAY + 4
    assert await storage.commit(claim, _due(a))
    assert await due_index(client, layout, 0) == {_at(DAY + 2): {"c"}, _at(DAY + 4): {"a"}}

    # c indexed under an instant its state does not give (as a state indexed under another
    # shop calendar is): the timer finds it there, and the sweep's commit takes it out.
    await store.commit(
        claim,
        states={"c": encode_state(c)},
        due={"c": _at(DAY)},
        indexed={"c": _at(DAY + 2)},
        outbox=[],
        offsets={},
    )
    assert await due_index(client, layout, 0) == {_at(DAY): {"c"}, _at(DAY + 4): {"a"}}
    states, _ = await storage.read(0, ["c"])
    c = states["c"]
    assert c is not None and c.due_day == DAY + 2
    c.due_day = DAY + 5
    assert await storage.commit(claim, _due(c), found={"c": _at(DAY)})
    assert await due_index(client, layout, 0) == {_at(DAY + 4): {"a"}, _at(DAY + 5): {"c"}}

    # An erasure takes the customer out of the bucket of the state it loaded.
    await storage.load(0, ["a"])
    assert await storage.erase(claim, "a", 60_000)
    assert await due_index(client, layout, 0) == {_at(DAY + 5): {"c"}}
