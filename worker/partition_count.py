"""The input partition count a deployment's Redis state is built with, and the refusal to run
(or to place customers) on input topics of another count.

A customer's state lives under their input partition (``<prefix>:{p<N>}:c:<id>``), the one
Kafka's default partitioner gives their id for the topics' partition count. Kafka lets an
operator add partitions to a topic at any time; from then on most customers' records land
on another partition than their state's, where they would be classified from scratch
(``from: null``, totals reset) while their old state stayed in Redis for ever. So the count
is recorded under the prefix (``<prefix>:partitions``, worker/keys.py) by the first worker
that starts there, and a worker compares the topics' count with it at start, on every take of
partitions and after every fetch (a count that grows while it runs stops it), and refuses a
difference before it writes anything (:class:`PartitionCountChanged`). ``produce``,
``erase`` and the commands that look customers up compare it too, without recording.

A state older than the record (a deployment upgrading to a release that keeps one) has none:
its count is inferred from the partitions' meta hashes, one per partition any worker ever
claimed. Every partition of the topics is assigned, hence claimed, as soon as workers run, so
a state built with N partitions has the meta hashes of 0..N-1 and no others: the count is the
highest claimed partition + 1. Only partitions 0..count are asked (one EXISTS each, in one
pipeline), and further ones while the last asked is claimed, never a SCAN of the keyspace. An
inferred count equal to the topics' is recorded and the deployment goes on as before; another
is refused, and nothing is recorded. What the inference cannot see: partitions added and
already taken by a worker of an older release (it had no check). That state is mixed
already, and is recorded as built with the new count.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from redis.exceptions import RedisClusterException, RedisError

from worker.redis.client import connect
from worker.settings import PREFIX, Settings, SettingsError, redact_url
from worker.store import Store, store_for

PROBE_STEP: Final = 256  # partitions asked at a time beyond the topics' count


class Built(NamedTuple):
    """The partition count a state is built with, and whether it is recorded (else inferred
    from the meta hashes of the partitions claimed)."""

    partitions: int
    recorded: bool


class PartitionCountChanged(SettingsError):
    """Raised when the input topics' partition count is not the one the Redis state under the
    prefix is built with: customers' records would land on partitions that do not hold their
    state, and be classified from scratch. Raised before anything is written."""

    def __init__(self, count: int, built: Built, prefix: str, option: str | None = None) -> None:
        key, n = f"{prefix}:partitions", built.partitions
        how = (
            f"recorded in {key!r}"
            if built.recorded
            else f"inferred from its partitions' meta hashes; {key!r} holds no count yet"
        )
        self.count, self.built, self.prefix = count, built, prefix
        if option is not None:  # a command told the count, to look customers up with
            super().__init__(
                f"{option} {count}: the state in Redis under {PREFIX}REDIS_PREFIX {prefix!r} "
                f"is built with {n} input partitions ({how}), and each customer's state lives "
                f"under their partition of {n}: give {option} {n}"
            )
            return
        super().__init__(
            f"{PREFIX}TOPIC_*: the input topics have {count} partitions, but the state in "
            f"Redis under {PREFIX}REDIS_PREFIX {prefix!r} is built with {n} ({how}), and each "
            f"customer's state lives under their partition of {n}: go back to input topics of "
            f"{n} partitions (new ones: Kafka cannot remove partitions), or keep {count} and "
            f"rebuild the state under a new {PREFIX}REDIS_PREFIX (or in a fresh Redis) from "
            "the history loaded again (docs/sizing.md#changing-the-partition-count)"
        )


def inferred(claimed: set[int]) -> int | None:
    """The partition count of a state whose claimed partitions (those with a meta hash) are
    ``claimed``: the highest + 1; None if none was ever claimed (there is no state)."""
    return max(claimed) + 1 if claimed else None


async def state_count(store: Store, count: int) -> Built | None:
    """The partition count the state under ``store``'s prefix is built with: the recorded
    one, else the one its meta hashes tell (see the module); None if there is no state.
    Reads only."""
    recorded = await store.recorded_partitions()
    if recorded is not None:
        return Built(recorded, recorded=True)
    if count <= 0:
        raise ValueError(f"a partition count must be > 0, got {count}")
    # Partitions 0..count; then, while the last asked is claimed (a state built with more
    # partitions than the topics have), PROBE_STEP more, to say how many.
    claimed: set[int] = set()
    asked = range(count + 1)
    while True:
        found = await store.claimed_among(asked)
        claimed |= found
        if asked[-1] not in found:
            break
        asked = range(asked[-1] + 1, asked[-1] + 1 + PROBE_STEP)
    found_count = inferred(claimed)
    return None if found_count is None else Built(found_count, recorded=False)


def refusal(
    count: int, built: Built | None, prefix: str, option: str | None = None
) -> PartitionCountChanged | None:
    """The refusal of topics of ``count`` partitions (given as ``option``, if it names one)
    for a state built as ``built`` (None: there is no state yet, any count will do); None if
    they agree."""
    if built is None or built.partitions == count:
        return None
    return PartitionCountChanged(count, built, prefix, option)


async def check(store: Store, count: int, *, option: str | None = None) -> Built | None:
    """Raise :class:`PartitionCountChanged` if the state is built with another count than
    ``count`` (given as ``option``, if it names one); records nothing (for commands that do
    not build state)."""
    built = await state_count(store, count)
    refused = refusal(count, built, store.keys.prefix, option)
    if refused is not None:
        raise refused
    return built


async def settle(store: Store, count: int) -> Built:
    """What a worker does before it takes partitions: :func:`check`, then record ``count`` if
    no count is recorded (an empty Redis, or an older state whose inferred count agrees).
    Nothing is written when it raises."""
    built = await check(store, count)
    if built is None or not built.recorded:
        built = Built(await store.record_partitions(count), recorded=True)
        refused = refusal(count, built, store.keys.prefix)  # another count won a race
        if refused is not None:
            raise refused
    return built


class Guard:
    """A live worker's check: the count the state is built with, settled with Redis once (on
    the first count the worker meets), then compared with every count it meets."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.built: Built | None = None

    async def check(self, count: int) -> None:
        """:func:`settle` on the first call; later ones compare with what it found."""
        if self.built is None:
            self.built = await settle(self.store, count)
        self.check_known(count)

    def check_known(self, count: int | None) -> None:
        """Raise :class:`PartitionCountChanged` if ``count`` (None: not known yet) is not the
        count settled (if any yet)."""
        if count is None:
            return
        refused = refusal(count, self.built, self.store.keys.prefix)
        if refused is not None:
            raise refused


async def check_against_redis(settings: Settings, count: int) -> str | None:
    """For a command that places customers by ``count`` without running the worker (produce,
    erase): raise :class:`PartitionCountChanged` if the state in the settings' Redis is
    built with another count. A Redis that cannot answer is not waited for: the one line
    to say on stderr that the count was not checked comes back instead (the worker checks it
    anyway before it applies anything)."""
    client = connect(settings)
    try:
        await check(store_for(settings, client), count)
    except (RedisError, RedisClusterException, OSError) as exc:
        return (
            f"segment-worker: the partition count ({count}) not checked against the state in "
            f"Redis at {redact_url(settings.redis_url)}, which could not be asked "
            f"({str(exc) or type(exc).__name__}); a worker refuses to run on topics of "
            "another count than its state's"
        )
    finally:
        await client.aclose()
    return None
