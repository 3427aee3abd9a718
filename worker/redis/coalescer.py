"""Batching of Redis Function calls: the partitions of one consumer batch commit side by side,
and their calls share one round trip instead of one each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Command = tuple[str | bytes | int, ...]


class Coalescer:
    """Function calls issued in the same turn of the event loop (the partitions of one
    consumer batch run side by side) go to Redis together, in one round trip: a pipeline
    without MULTI, in the order issued, each still its own atomic call answered on its own.
    (Not for a cluster client: its pipeline would ask a server for the keys of every FCALL;
    there each call goes straight to its slot's master.)"""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
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
            results = await self._round_trip([command for command, _ in calls])
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

    async def _round_trip(self, commands: Sequence[Command]) -> list[Any]:
        """Every command in one write, then each reply (an error reply as its exception), on
        a pooled connection: what redis-py's pipeline does for these calls, without its
        per-call machinery (transactions, scripts, response callbacks; retries are off in
        this client, see client.py) and with the arguments packed in one pass. Measured on
        four function calls of 31 arguments each: 0.19-0.26 ms of CPU, against 0.35-0.37
        (docs/benchmarks.md, "Seventh pass")."""
        pool: Any = self.client.connection_pool  # get_connection is untyped
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(
                pack(commands, connection.encoder), check_health=False
            )
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # the reply was read whole: read on
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(connection)


def pack(commands: Sequence[Command], encoder: Any) -> bytes:
    """Commands in RESP, as redis-py's pack_commands writes them for single-word command
    names, at a third of its CPU (~0.3 us an argument against ~0.9): a state commit carries
    several arguments per customer. Anything but bytes, text and integers goes through the
    client's encoder (which refuses what Redis cannot take)."""
    out: list[bytes] = []
    charset, errors = encoder.encoding, encoder.encoding_errors
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data: bytes
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode(charset, errors)
            elif type(arg) is int:  # not a bool: the encoder refuses those
                data = b"%d" % arg
            else:
                data = encoder.encode(arg)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
