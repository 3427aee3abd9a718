"""Redis adapter of the live worker: per-partition keys and their atomic, fenced updates.

The keys, the fields of the meta hash and what each holds are specified in
:mod:`worker.keys`, the only module that spells them.

Writes go through the Redis Functions library in ``worker/redis/segment_worker.lua`` (its header
documents every KEYS and ARGV). They check all their arguments before the first write and
refuse, writing nothing, when another worker has claimed the partition since the caller did.
Functions are loaded with FUNCTION LOAD: unlike the EVAL script cache they survive restarts
(AOF/RDB) and reach replicas. Loading them is an administrator's step (``segment-worker redis
install``): the worker's ACL user may not load code, so a worker only checks at start that the
library of its release is there (:meth:`worker.redis.library.Library.ensure`).

The client is built by :mod:`worker.redis.client`; Function calls go through
:mod:`worker.redis.functions` (those issued in one turn of the event loop share a round trip),
and the claim they carry, with its refusals, is :mod:`worker.redis.claims`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from worker.keys import (
    RELAYED,
    RULES,
    RULES_PASS,
    WRITES,
    Layout,
    glob_escape,
    name_in,
    partition_in,
    population_name,
    population_of,
)
from worker.redis.claims import Claim
from worker.redis.client import Client, text
from worker.redis.functions import CHANGED, RESET, Functions
from worker.redis.library import Library
from worker.redis.pseudonyms import Pseudonyms
from worker.settings import Settings, SettingsError


def store_for(settings: Settings, client: Client | None) -> Store:
    """The Store with the deployment's prefix and pseudonym key (``client`` None: only to
    unwrap values read by other means)."""
    key = settings.pseudonym_key.encode() if settings.pseudonym_key else None
    return Store(cast(Client, client), settings.redis_prefix, pseudonym_key=key)


class DamagedRecord(SettingsError):
    """Raised when ``<prefix>:partitions`` holds something other than a partition count: like a
    bad setting, a refusal to start (or to place customers) until an operator sees to it."""

    def __init__(self, key: str, value: str) -> None:
        super().__init__(
            f"Redis key {key!r} holds {value[:40]!r}, not the input partition count the state "
            "under its prefix is built with: set it to that count (a decimal number), or delete "
            "it to have it inferred again from the partitions' meta hashes (docs/sizing.md)"
        )


class Counts(NamedTuple):
    """A partition's population counts as stored, with what :meth:`Store.rewrite_populations`
    must find unchanged: the server they were read from and the partition's ``writes``."""

    server: str
    writes: int
    populations: dict[tuple[str, str], int]


class Snapshot(NamedTuple):
    """What :meth:`Store.read_checked` saw in one round trip."""

    run_id: str  # of the server holding the partition
    states: list[bytes | None]  # in the order asked, None for unknown customers
    erased: set[str]  # unknown customers that have an erasure marker


class Store:
    """Async adapter over a ``redis.asyncio`` client, plain or cluster (``decode_responses``
    off: states and outbox records are bytes). All keys of a partition share its hash tag, so
    in a Redis Cluster every call goes to the one master that holds the partition's slot."""

    def __init__(
        self, client: Client, prefix: str = "sw", *, pseudonym_key: bytes | None = None
    ) -> None:
        pool = getattr(client, "connection_pool", None)
        if pool is not None and pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must not decode responses: states are bytes")
        self.client = client
        self._functions = Functions(client)
        self.keys = Layout(prefix)
        self.library = Library(client, self.keys)
        self.names = Pseudonyms(pseudonym_key)

    def customer_key(self, partition: int, customer_id: str) -> str:
        return self.keys.customer(partition, self.names.name(customer_id))

    def erased_key(self, partition: int, customer_id: str) -> str:
        return self.keys.erased(partition, self.names.marker(customer_id))

    async def server_id(self, partition: int) -> str:
        """The run id of the server holding the partition: it changes when that Redis restarts
        (and may have lost writes)."""
        return (await self.read_checked(partition, []))[0]

    async def claim(self, partition: int) -> Claim:
        """Become the partition's owner: bump its epoch, which fences the previous owner, and
        read the offsets up to which its input is already applied (resume from there) and the
        server's run id, in one call."""
        reply = cast(
            list[bytes | int],
            await self._functions.call("segment_worker_claim", [self.keys.meta(partition)]),
        )
        offsets = {text(cast(bytes, reply[i])): int(reply[i + 1]) for i in range(2, len(reply), 2)}
        return Claim(partition, int(reply[0]), offsets, text(cast(bytes, reply[1])))

    async def scan_customers(
        self, partition: int, cursor: int, count: int
    ) -> tuple[int, list[str]]:
        """One SCAN step over the partition's customers: (next cursor, 0 when done; ids)."""
        prefix = self.keys.customers(partition)
        pattern = glob_escape(prefix) + "*"
        if isinstance(self.client, RedisCluster):  # SCAN the partition's master only
            node = cast(ClusterNode, self.client.get_node_from_key(prefix))
            reply = await node.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", count)
        else:
            reply = await self.client.scan(cursor, match=pattern, count=count)
        found = cast(list[bytes], reply[1])
        names = [key[len(prefix.encode()) :].decode() for key in found]
        return int(reply[0]), await self._ids(partition, names)

    async def every_state(self, count: int = 1000) -> AsyncIterator[list[tuple[int, str, bytes]]]:
        """Every stored customer's (partition, id, state), a batch of up to ``count`` at a
        time: one SCAN over the whole keyspace (every master of a cluster, so every
        partition), and one read of the values per batch. SCAN's promise holds: a customer
        stored for the whole scan comes at least once (possibly twice); one stored or deleted
        meanwhile may or may not."""
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=self.keys.every_customer(), count=count):
            batch.append(cast(bytes, key))
            if len(batch) >= count:
                yield await self._states_of(batch)
                batch = []
        if batch:
            yield await self._states_of(batch)

    async def _states_of(self, keys: list[bytes]) -> list[tuple[int, str, bytes]]:
        """(partition, id, state) of the customers whose state keys these are; those deleted
        since the scan saw their key are left out."""
        if isinstance(self.client, RedisCluster):  # one MGET per slot, i.e. per partition
            values = await self.client.mget_nonatomic(keys)
        else:
            values = await self.client.mget(keys)
        out = []
        for key, stored in zip(keys, cast(list[bytes | None], values), strict=True):
            if stored is not None:
                customer_id, blob = self.names.unwrap(stored)
                name = key.decode()
                out.append((partition_in(name), customer_id or name_in(name), blob))
        return out

    async def claimed_partitions(self) -> list[int]:
        """The partitions some worker has claimed (they have a meta hash), in order."""
        found = set()
        async for key in self.client.scan_iter(match=self.keys.every_meta(), count=1000):
            name = cast(bytes, key).decode()
            partition = partition_in(name)
            if name == self.keys.meta(partition):  # not a state key that happens to match
                found.add(partition)
        return sorted(found)

    async def claimed_among(self, partitions: Sequence[int]) -> set[int]:
        """Which of ``partitions`` some worker has claimed (they have a meta hash): one EXISTS
        each, in one pipeline (per master of a cluster), not a SCAN of the whole keyspace."""
        if not partitions:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for partition in partitions:
            pipe.exists(self.keys.meta(partition))
        found = cast(list[int], await pipe.execute())
        return {p for p, exists in zip(partitions, found, strict=True) if exists}

    async def recorded_partitions(self) -> int | None:
        """The input partition count recorded for the prefix's state (``<prefix>:partitions``),
        None if none is; :class:`DamagedRecord` if the key holds anything but a count."""
        return self._count(await self.client.get(self.keys.partitions()))

    async def record_partitions(self, count: int) -> int:
        """Record ``count`` as the input partition count the prefix's state is built with,
        unless a count is recorded already (one atomic SET NX GET: of workers starting at
        once, the first wins); the count recorded now."""
        if count <= 0:
            raise ValueError(f"a partition count must be > 0, got {count}")
        before = await self.client.set(self.keys.partitions(), count, nx=True, get=True)
        recorded = self._count(before)
        return count if recorded is None else recorded

    def _count(self, value: object) -> int | None:
        if value is None:
            return None
        text_value = cast(bytes, value).decode(errors="replace")
        if not (text_value.isascii() and text_value.isdigit() and int(text_value) > 0):
            raise DamagedRecord(self.keys.partitions(), text_value)
        return int(text_value)

    async def rules_version(self, partition: int) -> str | None:
        """The rules version every customer of the partition was last re-evaluated under."""
        return await self._meta_text(partition, RULES)

    async def rules_pass(self, partition: int) -> str | None:
        """The rules version of a re-evaluation begun on the partition and not finished: while
        there is one, customers may be classified under other rules than the mark's."""
        return await self._meta_text(partition, RULES_PASS)

    async def _meta_text(self, partition: int, name: str) -> str | None:
        value = await self.client.hget(self.keys.meta(partition), name)
        return None if value is None else text(cast(bytes, value))

    async def begin_rules(self, claim: Claim, version: str) -> None:
        """Record, before any customer is classified under ``version``, that a re-evaluation
        under it begins: if it does not finish, the next owner re-evaluates whatever rules are
        in force then. Fenced like :meth:`commit`."""
        await self._rules_call("segment_worker_begin_rules", claim, version)

    async def mark_rules(self, claim: Claim, version: str) -> None:
        """Record that every customer of the partition is classified under ``version`` (the
        re-evaluation ended). Fenced like :meth:`commit`: a stale owner's re-evaluation must
        not mark the new owner's."""
        await self._rules_call("segment_worker_mark_rules", claim, version)

    async def _rules_call(self, function: str, claim: Claim, version: str) -> None:
        if not version:
            raise ValueError("the rules version must not be empty")
        meta = [self.keys.meta(claim.partition)]
        args: list[str | bytes | int] = [claim.epoch, claim.server, version]
        await self._functions.fenced(function, claim, meta, args)

    async def read_checked(self, partition: int, customer_ids: Sequence[str]) -> Snapshot:
        """The run id of the server holding the partition, the states, and which unknown
        customers were erased, in one round trip: a caller about to write can tell that Redis
        restarted (and may have lost writes) since it last looked."""
        customers, erased = self.keys.customers(partition), self.keys.erased(partition, "")
        names = [self.keys.meta(partition)]
        names += [customers + self.names.name(c) for c in customer_ids]
        names += [erased + self.names.marker(c) for c in customer_ids]
        reply = cast(list[Any], await self._functions.call("segment_worker_read", names, ro=True))
        n = len(customer_ids)
        return Snapshot(
            text(reply[0]),
            [self._state(v) for v in reply[1 : n + 1]],
            {c for c, flag in zip(customer_ids, reply[n + 1 :], strict=True) if flag},
        )

    async def get(self, partition: int, customer_id: str) -> bytes | None:
        return self._state(await self.stored(partition, customer_id))

    async def stored(self, partition: int, customer_id: str) -> bytes | None:
        """The customer's value as Redis holds it (with a pseudonym key, the id comes first)."""
        value = await self.client.get(self.customer_key(partition, customer_id))
        return cast(bytes | None, value)

    async def forget(self, partition: int, customer_id: str, stored: bytes) -> bool:
        """Delete the customer's state, if the value is still ``stored``; False if it changed
        meanwhile. For a damaged state that stops its partition: no epoch (its owner is
        stopped on it) and no population change (its classes cannot be read). Its due entry
        goes when its instant comes (the timer's read drops names with no state)."""
        names = [self.keys.meta(partition), self.customer_key(partition, customer_id)]
        args: list[str | bytes | int] = [stored, self.names.name(customer_id)]
        return bool(await self._functions.call("segment_worker_forget", names, args))

    def _state(self, stored: bytes | None) -> bytes | None:
        return None if stored is None else self.names.unwrap(stored)[1]

    async def _ids(self, partition: int, names: list[str]) -> list[str]:
        """Customer ids of Redis names: the same without a pseudonym key; else read from the
        values (one MGET), skipping customers erased meanwhile."""
        if self.names.key is None or not names:
            return names
        values = cast(
            list[bytes | None],
            await self.client.mget([self.keys.customer(partition, n) for n in names]),
        )
        return [cast(str, self.names.unwrap(v)[0]) for v in values if v is not None]

    async def commit(
        self,
        claim: Claim,
        *,
        states: Mapping[str, bytes | None],
        due: Mapping[str, int | None],
        indexed: Mapping[str, int] | None = None,
        outbox: Sequence[bytes],
        offsets: Mapping[str, int],
        populations: Mapping[tuple[str, str], int] | None = None,
        acked: int = 0,
        relayed: int | None = None,
    ) -> None:
        """One atomic call (one round trip): states (None deletes); the due index (each
        customer put under its ``due`` instant, None for none, and taken from under the one
        ``indexed`` says it is indexed under now, if any); outbox records appended in order;
        input offsets (``off:<topic>`` = max(stored, given): never backwards) and class
        population deltas; first, as :meth:`ack_outbox` would, the trim of the ``acked``
        records at the outbox's head and the ``relayed`` mark (the ack of the previous
        batch's relay, folded into this call: one round trip less per batch). Raises
        :class:`Fenced`, having written nothing, if another worker claimed the partition since
        ``claim``, and :class:`ServerChanged` if the claim was made on another server
        process."""
        if acked < 0:
            raise ValueError(f"acked must be >= 0, got {acked}")
        p = claim.partition
        if not due.keys() <= states.keys():
            raise ValueError("due instants for customers whose state this commit does not write")
        set_keys: list[str] = []
        blobs: list[bytes] = []
        del_keys: list[str] = []
        # The due index, per customer in key order: (instant indexed under, new instant).
        set_due: list[str | int] = []
        del_due: list[str | int] = []
        was = indexed or {}
        customers = self.keys.customers(p)
        for customer_id, blob in states.items():
            if customer_id in due:
                at = due[customer_id]
                moved = (was.get(customer_id, ""), "" if at is None else at)
            else:
                moved = ("", "")
            if blob is None:
                del_keys.append(customers + self.names.name(customer_id))
                del_due += moved
            else:
                set_keys.append(customers + self.names.name(customer_id))
                blobs.append(self.names.wrap(customer_id, blob))
                set_due += moved
        pops = _population_args(populations or {})
        flat_offsets: list[str | int] = []
        for topic, offset in offsets.items():
            flat_offsets += (topic, offset)
        names = [self.keys.meta(p), self.keys.at(p), self.keys.outbox(p), *set_keys, *del_keys]
        counts = [len(set_keys), len(del_keys), len(outbox), len(offsets), len(pops) // 2]
        args: list[str | bytes | int] = [claim.epoch, claim.server, *counts]
        args += [*blobs, *set_due, *del_due, *outbox]
        args += flat_offsets
        args += pops
        if acked == 0 and relayed is None:
            await self._functions.fenced("segment_worker_commit", claim, names, args)
            return
        ack: list[str | bytes | int] = [acked, "" if relayed is None else relayed]
        await self._functions.fenced("segment_worker_ack_commit", claim, names, ack + args)

    async def ack_outbox(self, claim: Claim, count: int, relayed: int | None = None) -> None:
        """Trim the first ``count`` records, which the relay has had acknowledged by the broker,
        and remember ``relayed``, the change topic's offset after the last change it relayed.
        Fenced like :meth:`commit`: only the owner relays."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0 and relayed is None:
            return
        p = claim.partition
        names = [self.keys.meta(p), self.keys.outbox(p)]
        offset: str | int = "" if relayed is None else relayed
        args: list[str | bytes | int] = [claim.epoch, claim.server, count, offset]
        await self._functions.fenced("segment_worker_ack", claim, names, args)

    async def relayed(self, partition: int) -> int:
        """The change topic's offset after the last change this Redis knows was relayed."""
        value = await self.client.hget(self.keys.meta(partition), RELAYED)
        return 0 if value is None else int(cast(bytes, value))

    async def erase(
        self,
        claim: Claim,
        customer_id: str,
        marker_ttl_ms: int | None,
        indexed: int | None = None,
    ) -> bool:
        """GDPR erasure: delete the customer's state and its due entry (under ``indexed``,
        the instant it is indexed under); with a TTL, leave an erasure marker for that long.
        True if there was a state. Fenced like :meth:`commit`. (The tombstone event and the
        population deltas are the caller's.)"""
        if marker_ttl_ms is not None and marker_ttl_ms < 1:
            raise ValueError(f"marker_ttl_ms must be >= 1 or None, got {marker_ttl_ms}")
        p = claim.partition
        names = [
            self.keys.meta(p),
            self.keys.at(p),
            self.customer_key(p, customer_id),
            self.erased_key(p, customer_id),
        ]
        ttl: str | int = "" if marker_ttl_ms is None else marker_ttl_ms
        at: str | int = "" if indexed is None else indexed
        reply = await self._functions.fenced(
            "segment_worker_erase",
            claim,
            names,
            [claim.epoch, claim.server, self.names.name(customer_id), ttl, at],
        )
        return bool(reply)

    async def due(self, partition: int, now_ms: int, limit: int) -> dict[str, int]:
        """Customers whose next class change is due at or before ``now_ms``, earliest first,
        each with the instant it is indexed under (pass it to :meth:`commit` as ``indexed``).
        The call also moves a chunk of an older release's due index into the buckets."""
        if limit <= 0:
            return {}
        keys = [self.keys.at(partition), self.keys.due(partition)]
        flat = cast(
            list[bytes], await self._functions.call("segment_worker_due", keys, [now_ms, limit])
        )
        found = {text(flat[i + 1]): int(flat[i]) for i in range(0, len(flat), 2)}
        ids = await self._ids(partition, list(found))
        return {cid: found[self.names.name(cid)] for cid in ids}

    async def outbox(self, partition: int, limit: int) -> list[bytes]:
        """The oldest ``limit`` records waiting for the relay, oldest first."""
        if limit <= 0:
            return []
        key = self.keys.outbox(partition)
        return cast(list[bytes], await self.client.lrange(key, 0, limit - 1))

    async def populations(self, partition: int) -> dict[tuple[str, str], int]:
        """Customers per (dimension, class) in the partition, kept by every commit."""
        return (await self._meta_counts(partition))[0]

    async def counts(self, partition: int) -> Counts:
        """The partition's population counts, for :meth:`rewrite_populations`: read the
        server's run id first, so that a restart before the counts are read is noticed."""
        server = await self.server_id(partition)
        populations, writes = await self._meta_counts(partition)
        return Counts(server, writes, populations)

    async def _meta_counts(self, partition: int) -> tuple[dict[tuple[str, str], int], int]:
        """The meta hash's population counts and ``writes``, in one read."""
        fields = cast(dict[bytes, bytes], await self.client.hgetall(self.keys.meta(partition)))
        out: dict[tuple[str, str], int] = {}
        for name, value in fields.items():
            population = population_of(name)
            if population is not None:
                out[population] = int(value)
        return out, int(fields.get(WRITES.encode(), 0))

    async def rewrite_populations(
        self, partition: int, seen: Counts, populations: Mapping[tuple[str, str], int]
    ) -> bool:
        """Replace the partition's population counts with ``populations`` (an operator's
        recount), unless a commit or an erasure ran there since ``seen`` was read, or the
        server is another one: then nothing is written and this returns False."""
        names = [self.keys.meta(partition)]
        args = [seen.server, seen.writes, *_population_args(populations)]
        try:
            await self._functions.call("segment_worker_recount", names, args)
        except ResponseError as exc:
            if CHANGED.match(str(exc)) or RESET.match(str(exc)):
                return False
            raise
        return True


def _population_args(populations: Mapping[tuple[str, str], int]) -> list[str | int]:
    """(field, count) pairs of the Functions' ARGV; zero counts are left out."""
    out: list[str | int] = []
    for (dimension, class_name), count in populations.items():
        field = population_name(dimension, class_name)
        if count:
            out += (field, count)
    return out
