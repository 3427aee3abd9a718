"""The consumer loop's pacing: a trickle of input is fetched at most every linger, a backlog
at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker.live.fetch import Pacing
from worker.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_trickle_waits_out_the_linger_from_the_last_fetch_start() -> None:
    clock = Clock()
    pacing = Pacing(linger_ms=20, batch_size=1000, clock=clock)
    assert pacing.delay() == 0  # the first fetch goes at once
    pacing.fetched(began=100.0, count=3)
    clock.now = 100.005  # the batch took 5 ms
    assert pacing.delay() == pytest.approx(0.015)
    clock.now = 100.030  # it took longer than the linger: no wait
    assert pacing.delay() == 0


def test_a_backlog_is_fetched_at_once() -> None:
    clock = Clock()
    pacing = Pacing(linger_ms=20, batch_size=1000, clock=clock)
    pacing.fetched(began=100.0, count=1000)
    assert pacing.delay() == 0
    pacing.fetched(began=100.0, count=999)
    assert pacing.delay() == pytest.approx(0.020)


def test_no_linger_never_waits() -> None:
    clock = Clock()
    pacing = Pacing(linger_ms=0, batch_size=1000, clock=clock)
    pacing.fetched(began=100.0, count=0)
    assert pacing.delay() == 0


def test_fetch_waits_then_reports_what_came(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapped fetch sleeps the delay, then records the records it brought."""
    clock = Clock()
    slept: list[float] = []
    batches: list[dict[Any, list[int]] | None] = [
        {"tp": [1, 2, 3]},
        None,
        {"a": [1] * 6, "b": [1] * 4},
    ]

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    async def fake_fetch(*_: object) -> dict[Any, list[int]] | None:
        clock.now += 0.002
        return batches.pop(0)

    monkeypatch.setattr("worker.live.fetch.asyncio.sleep", fake_sleep)
    monkeypatch.setattr("worker.live.fetch.fetch", fake_fetch)
    pacing = Pacing(linger_ms=10, batch_size=10, clock=clock)
    settings = Settings()

    async def three() -> None:
        for _ in range(3):
            await pacing.fetch(None, None, settings, 40)  # type: ignore[arg-type]

    asyncio.run(three())
    # First at once; then 8 ms left of the linger after a 3-record batch; a rebalance (None)
    # counts as nothing fetched; the third brought a partition batch's worth.
    assert slept == [pytest.approx(0.008), pytest.approx(0.008)]
    assert pacing.delay() == 0
