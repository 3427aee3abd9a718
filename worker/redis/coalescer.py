"""Batching of Redis Function calls: the partitions of one consumer batch commit side by side,
and their calls share one round trip instead of one each."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis


class Coalescer:
    """Function calls issued in the same turn of the event loop (the partitions of one
    consumer batch run side by side) go to Redis together, in one round trip: a pipeline
    without MULTI, in the order issued, each still its own atomic call answered on its own.
    A call alone goes as it is. (Not for a cluster client: its pipeline would ask a server
    for the keys of every FCALL; there each call goes straight to its slot's master.)"""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[tuple[tuple[str | bytes | int, ...], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def call(self, *command: str | bytes | int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._pending:  # runs once this turn's calls are all in
            task = asyncio.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        self._pending.append((command, future))
        return await future

    async def _flush(self) -> None:
        calls, self._pending = self._pending, []
        try:
            if len(calls) == 1:
                results = [await cast(Any, self.client).execute_command(*calls[0][0])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for command, _ in calls:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in calls:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue  # its caller gave up waiting
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
