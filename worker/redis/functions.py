"""How a call of the Functions library reaches Redis, and how a fenced call's refusal is raised."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from worker.redis.claims import Claim, Fenced, ServerChanged
from worker.redis.client import Client
from worker.redis.coalescer import Coalescer

# The Functions' refusals (worker/redis/segment_worker.lua).
FENCED: Final = re.compile(r"FENCED current=(\d+)")
RESET: Final = re.compile(r"RESET current=([0-9a-f]+)")
CHANGED: Final = re.compile(r"CHANGED current=\d+")


class Functions:
    """Calls of the library's Functions over one client, plain or cluster: on a plain client,
    those issued in one turn of the event loop share a round trip (:class:`Coalescer`)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._calls = None if isinstance(client, RedisCluster) else Coalescer(client)

    async def fenced(
        self, function: str, claim: Claim, keys: list[str], args: list[str | bytes | int]
    ) -> Any:
        """A write made under ``claim``: refused, it raises :class:`Fenced` if another worker
        claimed the partition since, :class:`ServerChanged` if the claim is another server's."""
        try:
            return await self.call(function, keys, args)
        except ResponseError as exc:
            match = FENCED.match(str(exc))
            if match:
                raise Fenced(claim.partition, claim.epoch, int(match[1])) from None
            match = RESET.match(str(exc))
            if match:
                raise ServerChanged(claim.partition, match[1]) from None
            raise

    async def call(
        self,
        function: str,
        keys: list[str],
        args: Sequence[str | bytes | int] = (),
        *,
        ro: bool = False,
    ) -> Any:
        """FCALL of ``function`` (FCALL_RO with ``ro``), answered with its reply."""
        command = "FCALL_RO" if ro else "FCALL"
        if self._calls is not None:
            return await self._calls.call(command, function, len(keys), *keys, *args)
        # A cluster: straight to the slot's master. FCALL's keys are "movable", and redis-py
        # would otherwise ask a server for them (COMMAND GETKEYS) on every call.
        client = cast(RedisCluster, self.client)
        node = client.get_node_from_key(keys[0])
        return await client.execute_command(
            command, function, len(keys), *keys, *args, target_nodes=node
        )
