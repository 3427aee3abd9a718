"""The Redis Functions library every write of the store goes through
(``worker/redis/segment_worker.lua``): what ``segment-worker redis install`` does (load it,
rename the erasure markers of older releases) and what a worker checks at start. Loading is
an administrator's step: the worker's ACL user may not load code."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any, Final, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from worker.errors import SegmentWorkerError
from worker.keys import ERASED, Layout
from worker.redis.client import Client, text

LIBRARY: Final = "segment_worker"
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


class LibraryNotLoaded(SegmentWorkerError):
    """Raised when Redis does not hold this release's Functions library and our Redis user may
    not load it (the deployment's ACL): an administrator must run ``segment-worker redis
    install`` first (the Kubernetes init container and the compose service do)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"Redis does not hold the Functions library {LIBRARY!r} of this release ({detail}), "
            "and this Redis user may not load it: run `segment-worker redis install` with an "
            "admin's URL (--redis-url, or SEGMENT_WORKER_REDIS_URL[_FILE]) first"
        )


@cache
def library_code() -> str:
    """The Functions library source, shipped as package data."""
    return resources.files("worker.redis").joinpath("segment_worker.lua").read_text("utf-8")


class Library:
    """The library on the servers a client reaches: one, or every master of a cluster."""

    def __init__(self, client: Client, keys: Layout) -> None:
        self.client, self.keys = client, keys

    async def load(self) -> bool:
        """Load the Functions library unless exactly this code is loaded already (then nothing
        is written); True if it loaded. An administrator's step (``segment-worker redis
        install``): it needs FUNCTION LOAD, which the worker's ACL user does not have. Functions
        are persisted with the data, but a Redis that lost its files has none."""
        if await self.loaded():
            return False
        await self.client.function_load(library_code(), replace=True)
        return True

    async def ensure(self) -> None:
        """At start: go on if this release's library is loaded; else load it if our user may
        (tests, the demo, a Redis without ACLs); raise :class:`LibraryNotLoaded` if it may not.
        Checked by its code, not only its version number, on every master of a cluster."""
        if await self.loaded():
            return
        try:
            await self.client.function_load(library_code(), replace=True)
        except NoPermissionError as exc:
            raise LibraryNotLoaded(f"FUNCTION LOAD refused: {exc}") from None

    async def loaded(self) -> bool:
        """Whether every server that may hold partitions has exactly this release's library."""
        for server in await self._servers():
            reply = await server.execute_command(
                "FUNCTION LIST", "LIBRARYNAME", LIBRARY, "WITHCODE"
            )
            if _library_code(reply) != library_code():
                return False
        return True

    async def migrate_markers(self) -> int:
        """Rename the erasure markers an older release named by the raw id (it did without a
        pseudonym key) to their digest, keeping their TTL; how many. Part of ``redis install``:
        workers look for digests only, and an unmigrated marker would no longer keep an erased
        customer's late events out. Idempotent: a rerun finishes an interrupted one."""
        moved = 0
        for server in await self._servers():
            cursor = 0
            while True:
                reply = await server.execute_command(
                    "SCAN", cursor, "MATCH", self.keys.markers(), "COUNT", 500
                )
                cursor = int(reply[0])
                for key in cast(list[bytes], reply[1]):
                    old = key.decode()
                    name = old.partition("}:")[2].removeprefix(ERASED)
                    if _DIGEST.fullmatch(name):
                        continue
                    new = old.removesuffix(name) + hashlib.sha256(name.encode()).hexdigest()
                    ttl = int(await server.execute_command("PTTL", old))
                    if ttl != -2:  # -2: expired meanwhile
                        await server.execute_command(
                            "SET", new, "1", *(("PX", ttl) if ttl > 0 else ())
                        )
                        await server.execute_command("DEL", old)
                        moved += 1
                if cursor == 0:
                    break
        return moved

    async def _servers(self) -> list[Any]:
        """The servers that hold partitions: the client's, or every master of a cluster."""
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
            return list(self.client.get_primaries())
        return [self.client]


def _library_code(reply: Any) -> str | None:
    """The code of our library in a FUNCTION LIST reply; None if it is not loaded."""
    for entry in reply:
        # RESP2: a flat list of names and values; RESP3: a map.
        fields = entry if isinstance(entry, dict) else _pairs(entry)
        info = {text(k): v for k, v in fields.items()}
        if text(info.get("library_name", b"")) == LIBRARY:
            return text(info.get("library_code", b""))
    return None


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
