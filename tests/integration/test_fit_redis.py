"""`segment-worker fit --redis`: the CDNOW customers as a worker keeps them in Redis."""

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from tests.test_fit import cdnow_states
from worker.cli import main
from worker.core.codec import encode_state
from worker.kafka import partition_of
from worker.store import Store
from worker.tools.embedded import RedisServer

pytestmark = pytest.mark.integration
PARTITIONS = 4


async def seed(url: str) -> None:
    """Every CDNOW purchase, through mid 1998: the fit must leave out what follows --as-of."""
    client = aioredis.from_url(url)
    store = Store(client)
    await store.library.load()
    by_partition: dict[int, dict[str, bytes]] = {}
    for cid, state in cdnow_states().items():
        by_partition.setdefault(partition_of(cid, PARTITIONS), {})[cid] = encode_state(state)
    for partition, states in by_partition.items():
        claim = await store.claim(partition)
        await store.commit(claim, states=states, due={}, outbox=[], offsets={})
    await client.aclose()


def test_fit_reads_the_live_state_as_of_a_day(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(redis_server.url))
    args = ["fit", "--redis", redis_server.url, "--as-of", "1997-09-30T23:00:00Z"]
    assert main(args) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["customers"] == 2357
    fitted = report["bgnbd"]
    published = {"r": 0.243, "alpha": 4.414 * 7, "a": 0.793, "b": 2.426}
    assert {k: fitted[k] for k in published} == pytest.approx(published, rel=0.01)
    spend = report["gamma_gamma"]
    assert (spend["p"], spend["q"], spend["v"]) == pytest.approx((6.25, 3.74, 15.44), rel=0.01)


def test_fit_without_a_url_reads_the_worker_setting(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(redis_server.url))
    monkeypatch.setenv("SEGMENT_WORKER_REDIS_URL", redis_server.url)
    assert main(["fit", "--redis", "--as-of", "1997-09-30T23:00:00Z"]) == 0
    assert orjson.loads(capsys.readouterr().out)["customers"] == 2357
