"""``segment-worker redis install``: load the Redis Functions library as an administrator;
``segment-worker redis recount``: rebuild the class population counts from the states.

The worker's own Redis user may not load code (deploy/redis/users.acl has no FUNCTION LOAD:
with it, that user could run any Lua and replace other applications' libraries), so loading
is a separate step with an admin principal, run before the workers of a release start (the
Kubernetes init container, the compose service ``redis-install``). A recount reads states and
calls a Function, what the worker's user may do (and the admin's may not).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from redis.exceptions import NoPermissionError, RedisError, ResponseError

from worker.cli.common import Subparsers, redis_settings
from worker.progress import Progress
from worker.redis.client import connect
from worker.redis.library import LIBRARY
from worker.redis.recount import Recount, recount
from worker.store import Store, store_for

T = TypeVar("T")


def register(sub: Subparsers) -> None:
    """Add ``redis install`` and ``redis recount``."""
    group = sub.add_parser("redis", help="administer the worker's Redis")
    commands = group.add_subparsers(dest="redis_command", required=True, metavar="COMMAND")
    install = commands.add_parser(
        "install",
        help="load this release's Functions library (needs an admin's Redis user)",
        description=f"Load the Redis Functions library {LIBRARY!r} of this release into Redis "
        "(FUNCTION LOAD REPLACE, into every master of a cluster), unless exactly this code is "
        "loaded already, and rename erasure markers that an older release named by the raw "
        "customer id to their digest. Run it as users.acl's segment-worker-admin (FUNCTION "
        "LOAD and LIST, and SCAN, PTTL, SET, DEL on the worker's keys) before starting the "
        "workers of a release: they refuse to start without it. The URL comes from "
        "--redis-url or, as for `run`, SEGMENT_WORKER_REDIS_URL (or "
        "SEGMENT_WORKER_REDIS_URL_FILE, which keeps the password off the command line); TLS, "
        "cluster and key prefix settings as for `run`.",
    )
    install.add_argument(
        "--redis-url", help="the admin's redis:// or rediss:// URL (default: the settings')"
    )
    install.set_defaults(func=_install)
    count = commands.add_parser(
        "recount",
        help="rebuild the class population counts from the stored customer states",
        description="Count the classes of every stored customer state (the classes emitted to "
        "subscribers, not those consent withholds) per partition and rewrite each partition's "
        "population counts (GET /segments, the class_population gauge, audience's progress) "
        "to them: counts of a release that dropped decrements are too high. Print per "
        "dimension the customers counted in a class before and after; states that cannot be "
        "read are named on stderr and not counted. Safe while workers run: a partition's "
        "counts are replaced, in one Function call, only if no commit or erasure ran there "
        "since they were read before the scan (its 'writes' counter) on the same Redis "
        "server; a partition written meanwhile is left as it was and named, and the command "
        "exits 1: run it again, at a quiet time or with the workers stopped. Run it once "
        "every worker runs this release (older ones drop decrements again). Run it as the "
        "worker's Redis user (users.acl's segment-worker: SCAN, MGET, HGETALL, FCALL); the "
        "URL, TLS, cluster and key prefix settings as for `redis install`.",
    )
    count.add_argument(
        "--redis-url", help="the worker's redis:// or rediss:// URL (default: the settings')"
    )
    count.set_defaults(func=_recount)


def _install(args: argparse.Namespace) -> int:
    async def main(store: Store) -> tuple[bool, int]:
        return await store.library.load(), await store.library.migrate_markers()

    try:
        loaded, markers = _against(args.redis_url, main)
    except NoPermissionError as exc:
        print(
            f"segment-worker: this Redis user may not load Functions ({exc}): use an admin's "
            "URL (users.acl's segment-worker-admin)",
            file=sys.stderr,
        )
        return 2
    except ResponseError as exc:
        print(f"segment-worker: Redis refused the library: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"segment-worker: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    state = "loaded" if loaded else "already loaded, nothing changed"
    print(f"Functions library {LIBRARY!r} of this release: {state}")
    if markers:
        print(f"{markers} erasure marker(s) of an older release renamed to their digest")
    return 0


def _recount(args: argparse.Namespace) -> int:
    async def main(store: Store) -> Recount | None:
        if not await store.library.loaded():
            return None
        progress = Progress(None, "recount: reading customers", unit="customers")
        try:
            return await recount(store, progress)
        finally:
            progress.close()

    try:
        report = _against(args.redis_url, main)
    except NoPermissionError as exc:
        print(
            f"segment-worker: this Redis user may not recount ({exc}): use the worker's URL "
            "(users.acl's segment-worker)",
            file=sys.stderr,
        )
        return 2
    except (RedisError, OSError) as exc:
        print(f"segment-worker: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    if report is None:
        print(
            f"segment-worker: Redis does not hold the Functions library {LIBRARY!r} of this "
            "release: run `segment-worker redis install` first",
            file=sys.stderr,
        )
        return 2
    for dimension, (before, after) in report.totals().items():
        print(f"{dimension}: {before:,} -> {after:,} customers in a class")
    print(f"{len(report.after)} partition(s) rewritten from {report.customers:,} customers' states")
    for customer_id in report.unreadable:
        print(f"segment-worker: cannot read the state of {customer_id!r}", file=sys.stderr)
    if report.unreadable:
        print(f"{len(report.unreadable):,} state(s) not counted: unreadable", file=sys.stderr)
    if report.changed:
        print(
            f"segment-worker: partition(s) {', '.join(map(str, report.changed))} were written "
            "while counted (or Redis restarted): left as they were; run the recount again",
            file=sys.stderr,
        )
        return 1
    return 0


def _against(url: str | None, main: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a store of the settings' Redis (``url`` if given), closed after."""
    settings = redis_settings(url, option="--redis-url")

    async def run() -> T:
        client = connect(settings)
        try:
            return await main(store_for(settings, client))
        finally:
            await client.aclose()

    return asyncio.run(run())
