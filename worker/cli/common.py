"""What several commands share: argument types and blocks, traffic options, the settings a
command on the worker's Redis runs with, output files."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import math
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeAlias

import orjson
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError

from worker.core.deadletter import Stage, dead_letter
from worker.core.events import Reason, Rejection
from worker.core.rules import Rules, RulesError, load_rules
from worker.core.timeutil import parse_rfc3339
from worker.core.views import Show, showing
from worker.errors import UsageError
from worker.settings import PREFIX, Settings, redact_url

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command group's ``register`` adds its commands to it."""


def instant(text: str) -> int:
    """An RFC 3339 instant (``--as-of``, ``--at``, ``--start``), as epoch milliseconds; a bad one
    is a usage error that names the option."""
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    """A TCP port to listen on (0, "any free port", is not one: Faust's web server refuses it)."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 1..65535, got {value}")
    return value


def positive(text: str) -> int:
    """A count that must be at least 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative(text: str) -> int:
    """A count that may be 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seconds(text: str) -> float:
    """A span of time in seconds, 0 or more (a negative one or NaN is a usage error)."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def traffic_arguments(
    parser: argparse.ArgumentParser, *, events: int | None, customers: int | None
) -> None:
    """The simulated traffic's size, seed and start. ``None`` defaults are chosen by the
    command's target (its help says)."""
    chosen = "%(default)s"
    if events is None or customers is None:
        chosen = "by target, see above"
    parser.add_argument("--events", type=positive, default=events, help=f"events ({chosen})")
    parser.add_argument(
        "--customers", type=positive, default=customers, help=f"customers ({chosen})"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (%(default)s)")
    parser.add_argument(
        "--start",
        type=instant,
        default="2025-01-01T00:00:00Z",
        metavar="TIMESTAMP",
        help="when the simulated shop opens (%(default)s)",
    )


def store_arguments(parser: argparse.ArgumentParser, *, computed: str | None = None) -> None:
    """What a command on the customers in the worker's Redis takes besides the settings of
    `run`: the input partition count, which places a customer, and, where it computes window
    and score values (``computed`` names them), the instant it computes them at."""
    parser.add_argument(
        "--partitions",
        type=positive,
        help="partition count of the input topics (asked of Kafka); must be the one the state "
        "in Redis is built with",
    )
    if computed is not None:
        parser.add_argument(
            "--at",
            type=instant,
            metavar="TIMESTAMP",
            help=f"RFC 3339 instant at which {computed} are computed (default: now)",
        )


def computed_at(at: int | None, *, without: str) -> tuple[Rules | None, Show]:
    """For a command of :func:`store_arguments` with --at (``at``): the worker's rules (None
    when its file is refused: see :func:`rules_unless_refused`, ``without`` and --at), and
    how it shows a state: with figures at --at (default now), or as stored without rules."""
    path = Settings.from_env().rules
    rules = rules_unless_refused(path, without=without, needed_by=None if at is None else "--at")
    return rules, showing(rules, time.time_ns() // 1_000_000 if at is None else at)


def rules_unless_refused(
    path: Path | None, *, without: str, needed_by: str | None = None
) -> Rules | None:
    """The rules at ``path`` for a command that reads what the worker stored: while the
    worker refuses a rules file it runs on its old rules, and what it stored is what an
    operator needs then. A refused file is said on stderr in one line, with ``without``,
    what the command does without the rules; or, if ``needed_by`` names an option given
    that cannot do without them, raises UsageError naming it."""
    try:
        return load_rules(path)
    except RulesError as exc:
        refused = f"the rules file is refused: {exc.problems[0]}"
        if needed_by:
            raise UsageError(f"{needed_by} needs the rules, and {refused}") from None
        print(f"segment-worker: {without}, {refused}", file=sys.stderr)
        return None


def redis_arguments(parser: argparse.ArgumentParser, source: argparse._ActionsContainer) -> None:
    """``--redis [URL]`` (in ``source``, the group of the command's other sources) and
    ``--prefix``, for a command that reads the worker's state (see :func:`redis_settings`).
    Without a URL it is the worker's own setting, which keeps a password off the command line
    (argv is visible to every user of the machine)."""
    source.add_argument(
        "--redis",
        nargs="?",
        const="",
        metavar="URL",
        help="read the worker's state from Redis: this URL, or without one "
        "SEGMENT_WORKER_REDIS_URL (or SEGMENT_WORKER_REDIS_URL_FILE) as `run` reads it; TLS "
        "and cluster settings as for `run`",
    )
    parser.add_argument(
        "--prefix", help="Redis key prefix (default: SEGMENT_WORKER_REDIS_PREFIX, or sw)"
    )


def redis_settings(
    url: str | None, prefix: str | None = None, *, option: str = "--redis"
) -> Settings:
    """The settings of `run` (SEGMENT_WORKER_*: TLS files, cluster, ...) with the Redis URL and
    key prefix a command was given, where it was given them (the URL as ``option``): a bad
    one is a usage error that names the option."""
    return Settings.from_env(
        given={"redis_url": (option, url or None), "redis_prefix": ("--prefix", prefix)}
    )


REDIS_ERRORS = (RedisError, RedisClusterException, ConnectionError, TimeoutError, socket.gaierror)
"""What a Redis that cannot answer raises (a cluster that cannot be reached at all raises the
one that is not a RedisError)."""


def redis_failure(exc: Exception, settings: Settings) -> str:
    """The one line that says why the Redis of ``settings`` did not answer, naming its URL
    without the password (exit status 2 with it, as for a server Kafka cannot reach)."""
    where = f"Redis at {redact_url(settings.redis_url)}"
    if isinstance(exc, NoPermissionError):
        return (
            f"segment-worker: {where} refused a command to this user (deploy/redis/users.acl "
            f"says what it may do): {exc}"
        )
    return f"segment-worker: cannot reach {where}: {exc}"


def event_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of an events file without their line ends, numbered from 1 as
    rejects name them; a byte order mark before the first (as Windows tools write UTF-8) is
    not part of it."""
    for line_no, line in enumerate(lines, start=1):
        raw = line.rstrip(b"\r\n")
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if raw.strip():
            yield line_no, raw


def kafka_failure(
    exc: BaseException, settings: Settings, then: str = "", *, given: bool = False
) -> str:
    """The one line that says why the Kafka of ``settings`` did not answer, and ``then`` what
    to do about it: a broker it cannot connect to is named with where its address came from
    (``given``: the command's --kafka), any other error by its message (aiokafka's repr says
    no more)."""
    if isinstance(exc, KafkaConnectionError | OSError):
        source = "--kafka" if given else f"{PREFIX}KAFKA_BOOTSTRAP"
        where = f"cannot reach Kafka at {settings.kafka_bootstrap} ({source})"
    else:
        where = f"Kafka at {settings.kafka_bootstrap}"
    return f"segment-worker: {where}: {str(exc) or type(exc).__name__}" + (
        f"; {then}" if then else ""
    )


def reject_writer(out: BinaryIO | None, name: str) -> Callable[[int, Rejection, bytes], None]:
    """What replay and produce do with a line they refuse: write it to --rejects (if given) as
    a dead-letter record naming the file and line, at the stage the worker would refuse it."""

    def write(line_no: int, rejection: Rejection, raw: bytes) -> None:
        if out is not None:
            stage: Stage = "apply" if rejection.reason is Reason.UNSUPPORTED_CURRENCY else "parse"
            record = dead_letter(rejection, raw, {"file": name, "line": line_no}, stage)
            out.write(orjson.dumps(record) + b"\n")

    return write


def open_input(path: Path) -> BinaryIO:
    """``path`` opened for reading; one that cannot be opened ends the command naming it."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise SystemExit(f"segment-worker: cannot read {path}: {exc.strerror}") from None


@contextlib.contextmanager
def output(path: Path | None, default: BinaryIO | None) -> Iterator[BinaryIO | None]:
    """``path`` opened for writing, or ``default`` (left open) when no path was given; one that
    cannot be opened ends the command naming it (open every output before the work starts)."""
    if path is None:
        yield default
        return
    try:
        handle = path.open("wb")
    except OSError as exc:
        raise SystemExit(f"segment-worker: cannot write {path}: {exc.strerror}") from None
    with handle:
        yield handle
