"""The Redis key layout: the one place that spells a key or a field of the meta hash.

Every key of input partition N starts with ``<base>`` = ``<prefix>:{p<N>}:`` (``prefix`` from
SEGMENT_WORKER_REDIS_PREFIX, default ``sw``). ``{p<N>}`` is the FIRST ``{...}`` of every key,
hence its Redis Cluster hash tag: all keys of a partition live in one slot, so one Function
call can fence, dedupe, update states, index due times and append to the outbox atomically.
The prefix may not contain braces (it would take the hash tag over); customer ids may.

Keys (``<name>`` is the customer id, or with a pseudonym key, SEGMENT_WORKER_PSEUDONYM_KEY,
HMAC-SHA256(key, id) in hex, so that key names carry no id; ``<digest>`` is 64 lowercase hex
digits, never an id: the pseudonym with a pseudonym key, else SHA-256(id). docs/security.md
says what a pseudonym key hides and what it does not):

- ``<base>meta`` (hash): the partition's bookkeeping, one field each below.
- ``<base>at`` (zset): the due index's instants (epoch ms) at which some customer's class may
  change, each its own score; the timer reads what is due from the earliest.
- ``<base>at:<instant>`` (hash): the bucket of an instant: a field ``<name>`` (value empty)
  per customer due then. A name in a bucket costs ~30 bytes where a zset entry per customer
  costs ~112 (docs/benchmarks.md).
- ``<base>due`` (zset): the due index of releases before library version 9 (member
  ``<name>``, score its instant); the timer's read moves it into the buckets, earliest first.
- ``<base>outbox`` (list): output records (the core codec's frames) waiting for the relay,
  oldest first; trimmed once the broker has acknowledged them.
- ``<base>c:<name>`` (string): the customer's state, the core codec's bytes (with a pseudonym
  key, preceded by the length-prefixed customer id, which the timer must emit).
- ``<base>x:<digest>`` (string): erasure marker (value ``1``, with a TTL): the customer was
  erased, so late or re-read events and a read-back of writes Redis lost must not bring them
  back. Hashed even without a pseudonym key: an erasure must not leave the id in a key name.

Fields of the meta hash:

- ``epoch``: the owner's fencing epoch, bumped by every claim; every write carries the epoch of
  its claim and is refused, writing nothing, if another worker has claimed since.
- ``off:<topic>``: the next offset to read of input topic ``<topic>``; the input applied so far
  (never moves backwards); a new owner resumes from it.
- ``pop:<dimension>\\x1f<class>``: how many customers of the partition are in that class (the
  population gauges); kept by every commit, ``\\x1f`` separates dimension and class.
- ``rules``: the rules mark, the version of the rules every customer of the partition was last
  re-evaluated under.
- ``rules_pass``: the rules version of a re-evaluation begun and not finished (library version
  11 on): written before the first customer is classified under new rules, deleted with the
  rules mark at the end. While it is there some customers may be on other rules than the
  mark's, so an owner re-evaluates the partition under whatever rules are in force, even
  the mark's (a revert after a pass cut short).
- ``relayed``: the relay mark, the change topic's offset after the last change relayed (never
  moves backwards); after Redis loses writes, the changes from there on are read back.
- ``writes``: how many commits and erasures the partition has had (library version 10 on):
  ``redis recount`` rewrites the ``pop:`` fields only if it is unchanged since it began
  counting, i.e. no state changed while it read them.

The Functions library ``worker/redis/segment_worker.lua`` mirrors this layout in its header
(tests/test_keys.py holds the two together).

Keys of the whole prefix, not of one partition (``<prefix>:<name>``: no ``{...}``, so each is
one key in the Redis Cluster slot of its own name; read and written with plain commands,
never by the Functions, which touch the keys of one partition only):

- ``<prefix>:partitions`` (string): the input topics' partition count, in decimal, that the
  state under the prefix is built with: a customer's partition, hence where their state
  lives, depends on it. Set once, if absent (SET NX), by the first worker that starts under
  the prefix, or on the first start of a release that has it, the count of an older state
  inferred from its meta hashes; a worker, and every command that places customers, refuses
  topics of another count (worker/partition_count.py, docs/sizing.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

META: Final = "meta"
AT: Final = "at"
BUCKET: Final = "at:"
DUE: Final = "due"  # the due index before library version 9, moved into the buckets
OUTBOX: Final = "outbox"
CUSTOMER: Final = "c:"
ERASED: Final = "x:"

EPOCH: Final = "epoch"
OFFSET: Final = "off:"
POPULATION: Final = "pop:"
POP_SEPARATOR: Final = "\x1f"
RULES: Final = "rules"
RULES_PASS: Final = "rules_pass"
RELAYED: Final = "relayed"
WRITES: Final = "writes"

PARTITIONS: Final = "partitions"  # a key of the prefix: <prefix>:partitions

# The layout as data, for checks: key (after <base>) -> Redis type; the meta hash's fields.
KEY_TYPES: Final = {
    META: "hash",
    AT: "zset",
    f"{BUCKET}<instant>": "hash",
    DUE: "zset",
    OUTBOX: "list",
    f"{CUSTOMER}<name>": "string",
    f"{ERASED}<digest>": "string",
}
META_FIELDS: Final = (
    EPOCH,
    f"{OFFSET}<topic>",
    f"{POPULATION}<dimension>\\x1f<class>",
    RULES,
    RULES_PASS,
    RELAYED,
    WRITES,
)
# The keys of the whole prefix (after "<prefix>:") -> Redis type.
PREFIX_KEY_TYPES: Final = {PARTITIONS: "string"}


@dataclass(frozen=True, slots=True)
class Layout:
    """The keys of one deployment: its prefix, and the partition's hash tag in every key."""

    prefix: str = "sw"

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"prefix {self.prefix!r}: braces would take over the keys' hash tag")

    def base(self, partition: int) -> str:
        """``<prefix>:{p<N>}:``, the start of every key of the partition."""
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        return f"{self.prefix}:{{p{partition}}}:"

    def partitions(self) -> str:
        """``<prefix>:partitions``: the input partition count the prefix's state is built with."""
        return f"{self.prefix}:{PARTITIONS}"

    def meta(self, partition: int) -> str:
        return self.base(partition) + META

    def at(self, partition: int) -> str:
        return self.base(partition) + AT

    def bucket(self, partition: int, instant: int) -> str:
        """The due bucket of the customers whose class may change at ``instant`` (epoch ms)."""
        return f"{self.base(partition)}{BUCKET}{instant}"

    def due(self, partition: int) -> str:
        """The due index of releases before library version 9 (a zset of names)."""
        return self.base(partition) + DUE

    def outbox(self, partition: int) -> str:
        return self.base(partition) + OUTBOX

    def customers(self, partition: int) -> str:
        """The start shared by the partition's state keys (``<base>c:``)."""
        return self.base(partition) + CUSTOMER

    def customer(self, partition: int, name: str) -> str:
        """The state key of the customer Redis knows as ``name`` (id or pseudonym)."""
        return self.customers(partition) + name

    def erased(self, partition: int, digest: str) -> str:
        """The erasure marker's key of the customer whose marker digest is ``digest``."""
        return self.base(partition) + ERASED + digest

    def markers(self) -> str:
        """A SCAN MATCH pattern for the erasure markers of every partition."""
        return f"{glob_escape(self.prefix)}:{{p*}}:{ERASED}*"

    def every_customer(self) -> str:
        """A SCAN MATCH pattern for the state keys of every partition."""
        return f"{glob_escape(self.prefix)}:{{p*}}:{CUSTOMER}*"

    def every_meta(self) -> str:
        """A SCAN MATCH pattern for the meta hashes: one per partition ever claimed."""
        return f"{glob_escape(self.prefix)}:{{p*}}:{META}"


def partition_in(key: str) -> int:
    """The input partition a key belongs to: the N of its hash tag ``{p<N>}``."""
    tag = key.partition("{p")[2].partition("}")[0]
    if not tag.isdigit():
        raise ValueError(f"not a key of a partition: {key!r}")
    return int(tag)


def name_in(customer_key: str) -> str:
    """The customer's name in a state key (``<base>c:<name>``): what follows the hash tag."""
    rest = customer_key.partition("}:")[2]
    if not rest.startswith(CUSTOMER):
        raise ValueError(f"not a customer's state key: {customer_key!r}")
    return rest[len(CUSTOMER) :]


def glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN MATCH."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def offset_field(topic: str) -> str:
    """The meta field holding input topic ``topic``'s next offset to read."""
    return OFFSET + topic


def offset_topic(field: bytes) -> str | None:
    """The input topic whose offset a meta field holds; None for other fields."""
    text = field.decode()
    return text[len(OFFSET) :] if text.startswith(OFFSET) else None


def population_name(dimension: str, class_name: str) -> str:
    """A class's population field without its ``pop:`` (the Function adds it)."""
    if POP_SEPARATOR in dimension:
        raise ValueError(f"dimension {dimension!r} contains the population separator")
    return f"{dimension}{POP_SEPARATOR}{class_name}"


def population_of(field: bytes) -> tuple[str, str] | None:
    """(dimension, class) of a meta field counting a class's customers; None for others."""
    text = field.decode()
    if not text.startswith(POPULATION):
        return None
    dimension, _, class_name = text[len(POPULATION) :].partition(POP_SEPARATOR)
    return dimension, class_name
