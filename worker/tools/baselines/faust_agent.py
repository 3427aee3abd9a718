"""Baseline for `segment-worker bench --live`: the plain Faust way, an agent doing the
per-event work (parse, one Redis update per event). Run as a child process:
``python -m worker.tools.baselines.faust_agent BOOTSTRAP REDIS_URL GROUP TOPIC...``."""

from __future__ import annotations

import sys
import tempfile

import faust
import orjson
import redis.asyncio as aioredis


def build(bootstrap: str, redis_url: str, group: str, topics: list[str], datadir: str) -> faust.App:
    app = faust.App(
        group,
        datadir=datadir,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_session_timeout=6,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=5,
        consumer_auto_offset_reset="earliest",
        producer_acks=1,
    )
    redis = aioredis.from_url(redis_url)
    channel = app.topic(*topics, value_serializer="raw", key_serializer="raw")

    @app.agent(channel)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("customer_id"), str):
                await redis.hincrby(f"faust:c:{doc['customer_id']}", "n", 1)
            await redis.incr("faust:events")

    del count
    return app


if __name__ == "__main__":
    bootstrap, redis_url, group, *names = sys.argv[1:]
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    # Faust wants a data directory even with memory stores; removed however the worker ends
    # (the bench stops it with SIGTERM, which Faust turns into SystemExit).
    with tempfile.TemporaryDirectory(prefix="sw-faust-") as datadir:
        build(bootstrap, redis_url, group, names, datadir).main()
