"""``segment-worker redis install``: load the Redis Functions library as an administrator.

The worker's own Redis user may not load code (deploy/redis/users.acl has no FUNCTION LOAD:
with it, that user could run any Lua and replace other applications' libraries), so loading
is a separate step with an admin principal, run before the workers of a release start (the
Kubernetes init container, the compose service ``redis-install``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.exceptions import NoPermissionError, RedisError, ResponseError

from worker.cli.common import Subparsers, redis_settings
from worker.redis.client import connect
from worker.redis.library import LIBRARY
from worker.store import store_for


def register(sub: Subparsers) -> None:
    """Add ``redis install``."""
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


def _install(args: argparse.Namespace) -> int:
    settings = redis_settings(args.redis_url)

    async def main() -> tuple[bool, int]:
        client = connect(settings)
        try:
            store = store_for(settings, client)
            return await store.library.load(), await store.library.migrate_markers()
        finally:
            await client.aclose()

    try:
        loaded, markers = asyncio.run(main())
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
