"""A broker that stops answering while the worker relays: the failed produce is counted in
segment_worker_kafka_errors_total{op="produce"} (what the SegmentWorkerKafkaErrors alert and
the dashboard's Kafka errors panel read) and retried, and once the broker answers again
everything goes out and the worker is ready.

The broker is the test's own (pausing the session's would stall the other tests), of the kind
SW_TEST_BROKER names. The worker's producer runs without idempotence: an idempotent producer
retries a batch until it goes out, where a plain one fails the send once the batch has waited
request_timeout_ms, shortened here from aiokafka's 40 s to keep the test short."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import pytest

from tests.integration.live_support import (
    NOW,
    ManualClock,
    all_committed,
    change_ids,
    documents,
    kafka_errors,
    make_settings,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    running,
    wait_until,
)
from worker import kafka
from worker.core.timeutil import DAY_MS
from worker.service import Worker
from worker.tools.apache_kafka import ApacheKafka, chosen_broker
from worker.tools.embedded import Broker, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REQUEST_TIMEOUT_MS = 4000


@pytest.fixture
def own_broker() -> Iterator[ApacheKafka | Broker]:
    with chosen_broker() as started:
        yield started


async def test_a_produce_the_broker_does_not_answer_is_counted_and_retried_until_it_does(
    own_broker: ApacheKafka | Broker, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        kafka, "producer", partial(kafka.producer, request_timeout_ms=REQUEST_TIMEOUT_MS)
    )
    settings = replace(await make_settings(own_broker, redis_server.url), kafka_idempotence=False)
    events = one_day_of_traffic(100, orders_only=True)
    produced = await produce(settings, events)
    clock = ManualClock(NOW)
    worker = Worker(settings, clock)
    async with running(worker, timeout=60):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
        assert "produce" not in await kafka_errors(settings.http_port)

        own_broker.pause()
        try:
            # Time passes: the timer's changes go to a broker that does not answer.
            later = NOW + 200 * DAY_MS
            clock.now = later

            async def counted() -> bool:
                return (await kafka_errors(settings.http_port)).get("produce", 0) >= 1

            await wait_until(counted, 60, "the failed produce counted")
        finally:
            own_broker.resume()

        _, expected, _ = replay(events, NOW, as_of=later)
        want = documents(expected)

        async def relayed() -> bool:
            return change_ids(await read_all(settings, settings.topic_changes, 0.5)) == want

        await wait_until(relayed, 120, "the time-driven changes relayed")
        await wait_until(lambda: worker.pipeline.ready, 60, "ready again")
        assert worker.metrics.kafka_errors.labels("produce")._value.get() >= 1
