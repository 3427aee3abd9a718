"""The due index's buckets against a plain model, on a real redis-server: random commits with
right and wrong ``indexed`` instants, deletions and forgotten states. Every customer with a
state is always in the bucket of its due instant; with right instants the index holds
nothing else; with wrong ones the sweep's reads and commits take every stale name out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.live_support import due_index
from worker.keys import Layout
from worker.store import Store

pytestmark = pytest.mark.integration
LAYOUT = Layout("sw")
P = 3
CUSTOMERS = [f"c{i}" for i in range(5)]
INSTANTS = [10, 20, 30]
BEYOND = 1_000  # where the simulated sweep moves what it finds


@dataclass(frozen=True)
class Step:
    customer: int
    due: int | None  # None: no due instant
    hint: str  # "right", "none" (not told) or "wrong" (told another instant)
    delete: bool  # the state is deleted (due then None)
    forget: bool  # the state is deleted behind the index's back (`segment-worker forget`)


steps = st.builds(
    Step,
    st.integers(0, len(CUSTOMERS) - 1),
    st.sampled_from([None, *INSTANTS]),
    st.sampled_from(["right", "none", "wrong"]),
    st.booleans(),
    st.booleans(),
)


async def _run(url: str, script: list[Step], only_right: bool) -> None:
    client = aioredis.from_url(url)
    try:
        await client.flushall()
        store = Store(client)
        await store.library.load()
        claim = await store.claim(P)
        truth: dict[str, int | None] = {}  # customers with a state -> their due instant
        indexed: dict[str, int] = {}  # what the worker would have read: the right instant
        for step in script:
            cid = CUSTOMERS[step.customer]
            if step.forget and not only_right:
                if cid in truth:
                    assert await store.forget(P, cid, b"s")
                    del truth[cid]
                    indexed.pop(cid, None)
                continue
            due = None if step.delete else step.due
            hint = "right" if only_right else step.hint
            told: dict[str, int] = {}
            if hint == "right" and cid in indexed:
                told[cid] = indexed[cid]
            elif hint == "wrong":
                told[cid] = 7  # an instant it was never indexed under
            await store.commit(
                claim,
                states={cid: None if step.delete else b"s"},
                due={cid: due},
                indexed=told,
                outbox=[],
                offsets={},
            )
            if step.delete:
                truth.pop(cid, None)
            else:
                truth[cid] = due
            indexed.pop(cid, None)
            if due is not None:
                indexed[cid] = due
            index = await due_index(client, LAYOUT, P)
            for name, at in truth.items():  # never a missed timer
                if at is not None:
                    assert name in index.get(at, set()), (name, at, index)
            if only_right:
                expected: dict[int, set[str]] = {}
                for name, at in truth.items():
                    if at is not None:
                        expected.setdefault(at, set()).add(name)
                assert index == expected
        # Time passes: the sweep reads what is due, earliest first, and moves it on (as a
        # fired timer would), telling the commit the instant it found each customer under.
        for now in INSTANTS:
            for _ in range(4 * len(CUSTOMERS)):
                found = await store.due(P, now, 2)
                if not found:
                    break
                assert set(found) <= set(truth)  # a name with no state is never handed out
                moved = {c: None if truth[c] is None else BEYOND for c in found}
                states: dict[str, bytes | None] = dict.fromkeys(found, b"s")
                await store.commit(
                    claim, states=states, due=moved, indexed=found, outbox=[], offsets={}
                )
                truth.update(moved)
            assert not await store.due(P, now, 100)
        live = {c for c, at in truth.items() if at is not None}
        assert await due_index(client, LAYOUT, P) == ({BEYOND: live} if live else {})
    finally:
        await client.aclose()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=st.lists(steps, max_size=25), only_right=st.booleans())
def test_the_due_index_matches_its_model(
    redis_url: str, script: list[Step], only_right: bool
) -> None:
    asyncio.run(_run(redis_url, script, only_right))
