"""Send an events file to the input topics, placed as the worker expects them: the way to load
a shop's history into a deployment, or to feed it from a batch export.

Each line is checked with the worker's own parser first, so that only what the worker would
apply goes out (the rest is reported with its line, as replay reports it), and sent as it is,
to the topic of its type, keyed by its customer id, on the partition Kafka's default
partitioner gives that key (worker/kafka.py): other tools (kcat, confluent-kafka) place keys
elsewhere by default, and the worker refuses records on the wrong partition.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaProducer

from worker import kafka, kafka_topics, partition_count
from worker.core.engine import convert
from worker.core.events import Event, Order, ParseLimits, Rejection, Visit, parse_event
from worker.core.rules import Rules
from worker.errors import SegmentWorkerError
from worker.settings import PRODUCER_BATCHING, Settings

# Sends in flight before waiting for their acknowledgements: enough to fill the producer's
# batches, few enough that a failure is reported soon after the line that caused it.
IN_FLIGHT: Final = 20_000

RejectSink = Callable[[int, Rejection, bytes], None]


@dataclass
class Sent:
    """What a run did: lines read, records acknowledged per topic, lines refused by reason."""

    lines: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)


class MissingTopic(SegmentWorkerError):
    """An input topic does not exist: the producer must not create it with the broker's
    default partition count, which would break co-partitioning."""


def topic_of(event: Event, settings: Settings) -> str:
    if isinstance(event, Order):
        return settings.topic_orders
    if isinstance(event, Visit):
        return settings.topic_visits
    return settings.topic_profiles


async def produce(
    settings: Settings,
    rules: Rules,
    lines: Iterable[tuple[int, bytes]],
    on_reject: RejectSink,
    *,
    now_ms: int,
    on_progress: Callable[[Sent], None] = lambda _: None,
    on_warning: Callable[[str], None] = lambda _: None,
) -> Sent:
    """Send every valid line of ``lines`` (numbered lines without their line ends); return
    once all are acknowledged. A line the worker would refuse (the parser's checks, and an
    order in a currency ``rules`` cannot convert) goes to ``on_reject``. Before the first:
    the topics' partition count is checked against the one the state in Redis is built with
    (:class:`PartitionCountChanged` if they differ; ``on_warning`` is told if Redis cannot
    be asked)."""
    limits = ParseLimits(settings.max_event_bytes, settings.future_skew_ms)
    sent = Sent()
    async with kafka.started_producer(settings, **PRODUCER_BATCHING) as client:
        partitions = await _partitions(client, settings)
        unchecked = await partition_count.check_against_redis(
            settings, partitions[settings.topic_orders]
        )
        if unchecked is not None:
            on_warning(unchecked)
        pending: list[asyncio.Future[object]] = []
        for line_no, raw in lines:
            sent.lines += 1
            event = parse_event(raw, None, now_ms=now_ms, limits=limits)
            if isinstance(event, Order) and event.currency != rules.base_currency:
                converted = convert(event, rules)
                event = converted if isinstance(converted, Rejection) else event
            if isinstance(event, Rejection):
                sent.rejected[event.reason.value] += 1
                on_reject(line_no, event, raw)
                continue
            topic = topic_of(event, settings)
            customer = event.customer_id
            pending.append(
                await client.send(
                    topic,
                    raw,
                    key=customer.encode(),
                    partition=kafka.partition_of(customer, partitions[topic]),
                )
            )
            sent.topics[topic] += 1
            if len(pending) >= IN_FLIGHT:
                await _acknowledged(pending)
                on_progress(sent)
        await _acknowledged(pending)
    return sent


async def _partitions(client: AIOKafkaProducer, settings: Settings) -> dict[str, int]:
    """Each topic's partition count; MissingTopic if an input topic does not exist,
    NotCoPartitioned if the counts differ."""
    counts = await kafka_topics.partition_counts(client, settings)
    for name in (settings.topic_orders, settings.topic_visits, settings.topic_profiles):
        if name not in counts:
            raise MissingTopic(
                f"topic {name!r} does not exist on {settings.kafka_bootstrap}: create the "
                "input topics first, each with the same partition count (docs/contracts.md)"
            )
    return counts


async def _acknowledged(pending: list[asyncio.Future[object]]) -> None:
    """Wait for every send in ``pending`` (a failed one raises its KafkaError), then clear it."""
    await asyncio.gather(*pending)
    pending.clear()
