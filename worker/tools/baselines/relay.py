"""Latency baseline for `segment-worker bench live`: what the broker alone costs. Each input
event is read with the worker's consumer settings and answered at once with a stand-in change
(its cause's event id only) on the change topic: two broker hops, no Redis, no core. Its
producer writes as the worker's does (acks=all, idempotent where the broker allows it). Run as a
child process:
``python -m worker.tools.baselines.relay BOOTSTRAP GROUP WAIT_MS idempotent|plain OUT_TOPIC
TOPIC...``.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from worker import kafka
from worker.settings import PRODUCER_BATCHING


async def relay(
    bootstrap: str, group: str, wait_ms: int, out: str, topics: list[str], *, idempotent: bool
) -> None:
    consumer = kafka.consumer(
        bootstrap,
        *topics,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=max(10, wait_ms),
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    # The worker's batching: 16 KB batches each waiting for the last one's ack would make
    # this baseline, not the broker, the bottleneck.
    producer = kafka.producer(bootstrap, enable_idempotence=idempotent, **PRODUCER_BATCHING)
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():  # joined the group: the bench may start sending
            await consumer.getmany(timeout_ms=100)
        print("ready", flush=True)
        while True:
            batch = await consumer.getmany(timeout_ms=wait_ms, max_records=1000)
            for messages in batch.values():
                for m in messages:
                    try:
                        doc = orjson.loads(m.value or b"")
                    except orjson.JSONDecodeError:
                        continue  # the feed's malformed events: no change to time
                    if isinstance(doc, dict) and isinstance(doc.get("event_id"), str):
                        value = orjson.dumps({"cause": {"event_id": doc["event_id"]}})
                        await producer.send(out, value, key=m.key)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    bootstrap, group, wait, mode, out, *names = sys.argv[1:]
    if mode not in ("idempotent", "plain"):
        sys.exit(f"relay: expected idempotent or plain, got {mode!r}")
    asyncio.run(relay(bootstrap, group, int(wait), out, names, idempotent=mode == "idempotent"))
