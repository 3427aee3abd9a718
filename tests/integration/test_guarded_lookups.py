"""The live worker's HTTP port: metrics and health to anyone; customer data (/customers/{id},
/segments) only with the bearer token, not at all without one configured; and a lookup is
logged without the customer's id."""

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import ClientSession

from tests.integration.live_support import (
    AUTH,
    NOW,
    TOKEN,
    ManualClock,
    all_committed,
    one_day_of_traffic,
    produce,
    replay,
    running,
    wait_until,
)
from worker.service import Worker
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

OFF = "customer data is not served"


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[ClientSession]:
    """A worker with ``settings``, and an HTTP session on its port."""
    worker = Worker(settings, ManualClock(NOW))
    async with running(worker), ClientSession(f"http://127.0.0.1:{settings.http_port}") as http:

        async def up() -> bool:
            with contextlib.suppress(OSError):
                async with http.get("/healthz") as resp:
                    return resp.status == 200
            return False

        await wait_until(up, 60, "the HTTP port")
        yield http


async def test_customer_data_needs_the_bearer_token(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="segment_worker.http")
    events = one_day_of_traffic(60, seed=7, orders_only=True)
    produced = await produce(settings, events)
    expected, _, _ = replay(events, NOW)
    cid = sorted(expected.states)[0]
    async with serving(settings) as http:
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
        for open_to_all in ("/metrics", "/healthz", "/readyz"):
            async with http.get(open_to_all) as resp:
                assert resp.status == 200, open_to_all
        wrong_same_length = "x" * len(TOKEN)
        for path in (f"/customers/{cid}", "/segments"):
            for headers in (
                {},
                {"Authorization": f"Bearer {wrong_same_length}"},
                {"Authorization": f"Bearer {TOKEN}-and-more"},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                async with http.get(path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
                    assert cid not in await resp.text()
            async with http.get(path, headers=AUTH) as resp:
                assert resp.status == 200, path
        async with http.get(f"/customers/{cid}", headers=AUTH) as resp:
            assert (await resp.json())["customer_id"] == cid
    logged = [r.getMessage() for r in caplog.records if r.name == "segment_worker.http"]
    assert "GET /customers/<id>" in logged
    assert "refused GET /customers/<id>: no or wrong bearer token" in logged
    assert not [line for line in logged if cid in line]
    assert not [line for line in logged if OFF in line]


async def test_without_a_token_customer_data_is_off_and_the_log_says_so_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = replace(settings, http_token=None)
    async with serving(settings) as http:
        async with http.get("/metrics") as resp:
            assert resp.status == 200
        for path in ("/customers/anyone", "/segments"):
            for headers in ({}, AUTH):
                async with http.get(path, headers=headers) as resp:
                    assert resp.status == 404, (path, headers)
                    assert await resp.json() == {"error": "not found"}  # not "unknown customer"
    said = [r for r in caplog.records if OFF in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING
    assert "SEGMENT_WORKER_HTTP_TOKEN" in said[0].getMessage()
