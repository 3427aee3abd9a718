"""Settings of the live worker, from ``SEGMENT_WORKER_*`` environment variables and an
optional file of them (``SEGMENT_WORKER_SETTINGS_FILE``).

Every setting is checked at start and a bad one fails with a message naming the variable,
not with a stack trace an hour later. Secrets can come from files (``<NAME>_FILE``, as
Kubernetes and Docker mount them) and never appear in reprs or logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from redis.connection import ConnectionPool

from worker.errors import SegmentWorkerError, UsageError

PREFIX: Final = "SEGMENT_WORKER_"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PSEUDONYM_KEY_MIN: Final = 32  # bytes, SHA-256's size: a short key is guessed, then every id
MIN_SIGNING_KEY_BYTES: Final = 32
# Names a file of settings (NAME=value lines); the environment's own values win over it.
SETTINGS_FILE: Final = f"{PREFIX}SETTINGS_FILE"


class SettingsError(SegmentWorkerError, ValueError):
    """Raised when a setting is missing or malformed; the message names the variable."""


class OptionError(SettingsError, UsageError):
    """Raised when a command's option that stands in for a setting (``--redis-url`` for
    SEGMENT_WORKER_REDIS_URL) is malformed; the message names the option, as typed."""


def _secret() -> Any:
    return field(default=None, repr=False, metadata={"secret": True})


# How the worker's producer batches output (the relay latency baseline uses the same): a
# batch's changes go out in a few large record batches, not dozens of 16 KB ones each
# waiting for the previous one's ack; below the brokers' default 1 MB message limit.
PRODUCER_BATCHING: Final = {"linger_ms": 5, "max_batch_size": 768 * 1024}


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = field(default="localhost:9092", metadata=_doc("host:port[,host:port]"))
    kafka_security_protocol: str = field(
        default="PLAINTEXT", metadata=_doc("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    )
    kafka_sasl_mechanism: str = field(
        default="PLAIN", metadata=_doc("PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = _secret()
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_idempotence: bool = field(
        default=True, metadata=_doc("idempotent producer; turn off only for brokers without it")
    )
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    redis_cluster: bool = field(
        default=False, metadata=_doc("REDIS_URL is one node of a Redis Cluster")
    )
    redis_tls_cafile: Path | None = field(
        default=None, metadata=_doc("CA bundle that signed the Redis server's certificate")
    )
    redis_tls_certfile: Path | None = field(
        default=None, metadata=_doc("client certificate, when Redis requires one (mutual TLS)")
    )
    redis_tls_keyfile: Path | None = field(default=None, metadata=_doc("its private key"))
    redis_prefix: str = "sw"
    pseudonym_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "secret": True,
            "doc": "HMAC key, >= 32 bytes: Redis key names carry a keyed hash, not the id",
        },
    )
    change_signing_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "secret": True,
            "doc": "HMAC key (>= 32 bytes) signing change records; read-back trusts only those",
        },
    )
    change_signing_previous_key: str | None = field(
        default=None,
        repr=False,
        metadata={"secret": True, "doc": "the key before a rotation: still verifies, never signs"},
    )
    rules: Path | None = field(
        default=None, metadata=_doc("rules file; built-in defaults if unset")
    )
    http_host: str = field(
        default="127.0.0.1",
        metadata=_doc("address the HTTP port binds; the container image sets 0.0.0.0"),
    )
    http_port: int = 8080
    http_token: str | None = field(
        default=None,
        repr=False,
        metadata={
            "secret": True,
            "doc": "bearer token for customer data (/customers, /segments); unset: those are off",
        },
    )
    topic_orders: str = "orders"
    topic_visits: str = "visits"
    topic_profiles: str = field(
        default="profiles",
        metadata=_doc("customer traits (profile.v1), co-partitioned with orders and visits"),
    )
    topic_changes: str = "segment-changes"
    topic_dlq: str = "segment-worker-dlq"
    topic_erasures: str = field(
        default="segment-worker-erasures",
        metadata=_doc("erasure requests, keyed by customer_id, co-partitioned with the inputs"),
    )
    topic_classes: str = field(
        default="segment-classes",
        metadata=_doc(
            "each customer's current classes, compacted, as many partitions as the inputs"
        ),
    )
    topic_replication: int = field(
        default=1,
        metadata=_doc("replication factor of the topics the worker creates; 3 in production"),
    )
    erasure_marker_days: int = field(
        default=400, metadata=_doc("how long events of an erased customer are suppressed")
    )
    group_id: str = "segment-worker"
    batch_size: int = field(default=1000, metadata=_doc("max records per partition batch"))
    batch_wait_ms: int = field(default=50, metadata=_doc("max wait for a batch to fill"))
    batch_linger_ms: int = field(
        default=10,
        metadata=_doc(
            "while input trickles in, min time between fetches: fewer, fuller batches, "
            "less CPU per event, up to this much more latency; 0: fetch at once"
        ),
    )
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int = 30_000
    max_poll_interval_ms: int = 300_000
    timer_interval_ms: int = field(default=500, metadata=_doc("how often due customers are swept"))
    timer_batch: int = 1000
    shutdown_timeout_ms: int = field(
        default=30_000,
        metadata=_doc(
            "how long a stop signal waits for the batch in flight and its relay before "
            "`run` exits without them (exit status 1); a second signal exits at once"
        ),
    )
    stuck_retry_ms: int = field(
        default=30_000,
        metadata=_doc("how often a partition stopped on an unreadable stored state is retried"),
    )
    rules_reevaluation_rate: int = field(
        default=5000, metadata=_doc("customers per second re-classified after a rules change")
    )
    max_event_bytes: int = 64 * 1024
    future_skew_ms: int = 5 * 60 * 1000
    clock_start: str | None = field(
        default=None, metadata=_doc("simulated clock: RFC 3339 start instant (demo, tests)")
    )
    clock_speed: float = field(
        default=1.0, metadata=_doc("simulated clock: seconds of shop time per real second")
    )

    def __post_init__(self) -> None:
        # Each check with what it expects, so that the message says how to fix the value.
        checks: dict[str, tuple[Callable[[Any], bool], str]] = {
            "http_host": (bool, "an address to bind, such as 127.0.0.1 or 0.0.0.0"),
            "http_port": (lambda v: 1 <= v <= 65535, "a port 1..65535"),
            "batch_size": (lambda v: 1 <= v <= 100_000, "1..100000"),
            "batch_wait_ms": (lambda v: 0 <= v <= 60_000, "0..60000"),
            "batch_linger_ms": (lambda v: 0 <= v <= 1000, "0..1000"),
            "session_timeout_ms": (lambda v: v >= 1000, ">= 1000"),
            "heartbeat_interval_ms": (
                lambda v: 100 <= v < self.session_timeout_ms,
                f">= 100 and below SESSION_TIMEOUT_MS ({self.session_timeout_ms})",
            ),
            "rebalance_timeout_ms": (lambda v: v >= 1000, ">= 1000"),
            "max_poll_interval_ms": (lambda v: v >= 1000, ">= 1000"),
            "timer_interval_ms": (lambda v: v >= 10, ">= 10"),
            "timer_batch": (lambda v: v >= 1, ">= 1"),
            "topic_replication": (lambda v: 1 <= v <= 32767, "1..32767"),
            "stuck_retry_ms": (lambda v: v >= 100, ">= 100"),
            "shutdown_timeout_ms": (lambda v: 0 <= v <= 3_600_000, "0..3600000"),
            "max_event_bytes": (lambda v: v >= 256, ">= 256"),
            "future_skew_ms": (lambda v: v >= 0, ">= 0"),
            "erasure_marker_days": (lambda v: 1 <= v <= 36_500, "1..36500"),
            "rules_reevaluation_rate": (lambda v: v >= 1, ">= 1"),
            "redis_prefix": (
                lambda v: bool(v) and not set(v) & set("{}*?[] "),
                "a non-empty key prefix without braces, glob characters or spaces",
            ),
            "group_id": (bool, "a non-empty consumer group id"),
            "clock_speed": (lambda v: 0 < v <= 1e7, "above 0 and at most 1e7"),
            "kafka_security_protocol": (
                lambda v: v in SECURITY_PROTOCOLS,
                "one of " + ", ".join(SECURITY_PROTOCOLS),
            ),
            "kafka_sasl_mechanism": (
                lambda v: v in SASL_MECHANISMS,
                "one of " + ", ".join(SASL_MECHANISMS),
            ),
            "redis_url": (
                _redis_url_parses,
                "redis://[USER:PASSWORD@]HOST:PORT/DB, rediss://... (TLS) or unix:///PATH",
            ),
            "kafka_bootstrap": (
                lambda v: all(
                    h.rpartition(":")[0] and h.rpartition(":")[2].isdigit() for h in v.split(",")
                ),
                "HOST:PORT[,HOST:PORT...]",
            ),
        }
        for name, (ok, expected) in checks.items():
            value = getattr(self, name)
            if not ok(value):
                # None of these is a secret; a Redis URL may hold a password.
                shown = repr(redact_url(value) if name == "redis_url" else value)[:60]
                raise SettingsError(f"{PREFIX}{name.upper()}: expected {expected}, got {shown}")
        names = [
            self.topic_orders,
            self.topic_visits,
            self.topic_profiles,
            self.topic_changes,
            self.topic_dlq,
            self.topic_erasures,
            self.topic_classes,
        ]
        if len(set(names)) != len(names) or not all(names):
            raise SettingsError(f"{PREFIX}TOPIC_*: topic names must be distinct and non-empty")
        for name in (
            "kafka_ssl_cafile",
            "kafka_ssl_certfile",
            "kafka_ssl_keyfile",
            "redis_tls_cafile",
            "redis_tls_certfile",
            "redis_tls_keyfile",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise SettingsError(f"{PREFIX}{name.upper()}: no such file: {path}")
        tls_files = (self.redis_tls_cafile, self.redis_tls_certfile, self.redis_tls_keyfile)
        if any(tls_files) and not self.redis_url.startswith("rediss://"):
            raise SettingsError(f"{PREFIX}REDIS_URL: TLS files are set, so use rediss://")
        if (self.redis_tls_certfile is None) != (self.redis_tls_keyfile is None):
            raise SettingsError(f"{PREFIX}REDIS_TLS_KEYFILE: give the certificate and key together")
        if self.pseudonym_key is not None and len(self.pseudonym_key.encode()) < PSEUDONYM_KEY_MIN:
            raise SettingsError(
                f"{PREFIX}PSEUDONYM_KEY: at least {PSEUDONYM_KEY_MIN} bytes, got "
                f"{len(self.pseudonym_key.encode())} (e.g. `openssl rand -hex 32`)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise SettingsError(f"{PREFIX}KAFKA_SASL_USERNAME: required for SASL")
        for name in ("change_signing_key", "change_signing_previous_key"):
            key = getattr(self, name)
            if key is not None and len(key.encode()) < MIN_SIGNING_KEY_BYTES:
                raise SettingsError(  # (never the key itself)
                    f"{PREFIX}{name.upper()}: expected at least {MIN_SIGNING_KEY_BYTES} bytes "
                    f"(e.g. `openssl rand -hex 32`), got {len(key.encode())}"
                )
        if self.change_signing_previous_key and not self.change_signing_key:
            raise SettingsError(
                f"{PREFIX}CHANGE_SIGNING_PREVIOUS_KEY: set CHANGE_SIGNING_KEY too (it signs)"
            )

    def signing_keys(self) -> tuple[bytes, ...]:
        """The keys change records verify with, the signing one first (none: unsigned)."""
        keys = (self.change_signing_key, self.change_signing_previous_key)
        return tuple(k.encode() for k in keys if k)

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`: the variables that make a `segment-worker run`
        process use these settings (for child processes of benchmarks and tests)."""
        env = {}
        for f in fields(self):
            raw = getattr(self, f.name)
            if raw is not None:
                env[f"{PREFIX}{f.name.upper()}"] = (
                    str(raw).lower() if isinstance(raw, bool) else str(raw)
                )
        return env

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        given: Mapping[str, tuple[str, object]] | None = None,
    ) -> Settings:
        """The settings the environment gives, over those of the file ``SETTINGS_FILE``
        names, if it names one; and over both, those a command was given as options:
        ``given`` maps a field to (option, value), a value None not given. A bad one of those
        raises OptionError, naming what the user typed, not the variable it stands in for."""
        options = {name: pair for name, pair in (given or {}).items() if pair[1] is not None}
        env = os.environ if env is None else env
        known = {f"{PREFIX}{f.name.upper()}" for f in fields(cls)}
        known |= {f"{name}_FILE" for name in known}
        if SETTINGS_FILE in env:
            # The environment wins over the file, a NAME_FILE there over the file's NAME too.
            from_file = read_settings_file(env[SETTINGS_FILE], known)
            env = {
                **{k: v for k, v in from_file.items() if k not in env and _twin(k) not in env},
                **env,
            }
        known.add(SETTINGS_FILE)
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise SettingsError(f"{unknown[0]}: unknown setting (typo?)")
        values: dict[str, Any] = {name: value for name, (_, value) in options.items()}
        for f in fields(cls):
            name = f"{PREFIX}{f.name.upper()}"
            if f.name in options:
                continue
            raw = env.get(name)
            if raw is not None and f"{name}_FILE" in env:
                raise SettingsError(f"{name}: set it or {name}_FILE, not both")
            if raw is None and f"{name}_FILE" in env:
                raw = _read_secret(f"{name}_FILE", env[f"{name}_FILE"])
            if raw is None:
                continue
            values[f.name] = _convert(name, raw, f.type)
        try:
            return cls(**values)
        except SettingsError as exc:
            raise _as_option(exc, options) from None

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, current value, what it is) for --help and the start-up log; secrets
        are masked."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                shown = "(set)" if value else "(not set)"
            elif f.name == "redis_url":
                shown = redact_url(value)
            else:
                shown = str(value)
            out.append((f"{PREFIX}{f.name.upper()}", shown, f.metadata.get("doc", "")))
        return out


def _as_option(exc: SettingsError, options: Mapping[str, tuple[str, object]]) -> SettingsError:
    """``exc`` naming the option instead, if it is about a setting given as one."""
    for name, (option, _) in options.items():
        variable = f"{PREFIX}{name.upper()}: "
        if str(exc).startswith(variable):
            return OptionError(f"{option}: {str(exc).removeprefix(variable)}")
    return exc


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, in the user part and in a
    ``password=`` query parameter, which redis-py reads too (the rest is kept). Split by
    hand, not by urlsplit, so that a URL too broken to parse is still masked."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    masked = f"{scheme}{sep}{user}:***{at}{host}" if colon else f"{scheme}{sep}{rest[:end]}"
    return masked + _QUERY_PASSWORD.sub(r"\1***", rest[end:])


_EXPORT: Final = re.compile(r"^export\s+")
# A quoted value: single quotes literal; in double quotes a backslash escapes one character.
_QUOTED: Final = {"'": re.compile(r"'([^']*)'"), '"': re.compile(r'"((?:[^"\\]|\\.)*)"')}
_ESCAPE: Final = re.compile(r"\\(.)")
# What a backslash escapes in double quotes for Compose and systemd alike (they read
# others, ``\n`` among them, differently: such a value is refused).
_ESCAPED: Final = '"\\$`'
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _redis_url_parses(url: str) -> bool:
    """Whether redis-py can connect to ``url`` as given (it raises at the first connection
    otherwise, with a traceback and no variable named)."""
    try:
        ConnectionPool.from_url(url)
    except ValueError:
        return False
    return True


def _twin(name: str) -> str:
    """NAME_FILE for NAME and NAME for NAME_FILE: two ways to give one setting."""
    return name.removesuffix("_FILE") if name.endswith("_FILE") else f"{name}_FILE"


def read_settings_file(path: str, known: set[str]) -> dict[str, str]:
    """``NAME=value`` lines, as Docker's and Compose's ``env_file`` and systemd's
    ``EnvironmentFile`` hold them (``#`` comments, blank lines, an optional ``export``, a
    quoted value unquoted), so that one file serves all of them; every name must be one of
    ours, at most once."""
    try:
        text = Path(path).read_text("utf-8-sig")  # a byte order mark, as Notepad writes
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise SettingsError(f"{SETTINGS_FILE}: cannot read {path}: {reason}") from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = _EXPORT.sub("", line).partition("=")
        name, value = name.strip(), value.strip()
        where = f"{path}:{number}"
        if not equals:
            raise SettingsError(f"{where}: expected {PREFIX}NAME=value")
        if name not in known:
            raise SettingsError(f"{where}: {name}: unknown setting (typo?)")
        if name in out:
            raise SettingsError(f"{where}: {name} is set twice in the file")
        out[name] = _unquoted(value, f"{where}: {name}")
    return out


def _unquoted(value: str, where: str) -> str:
    r"""``value`` without its quotes, if quoted, as Compose's ``env_file`` and systemd's
    ``EnvironmentFile`` both read it: ``'...'`` as written; in ``"..."``, ``\"``, ``\\``,
    ``\$`` and ``\``` are the character. What they read differently is refused."""
    pattern = _QUOTED.get(value[:1])
    if pattern is None:
        return value
    quoted = pattern.match(value)
    if quoted is None:
        raise SettingsError(f"{where}: the value's {value[0]} quote is not closed on its line")
    if quoted.end() < len(value):
        raise SettingsError(f"{where}: text after the value's closing quote")
    if value[0] == "'":
        return quoted[1]
    return _ESCAPE.sub(lambda m: _escaped(m[1], where), quoted[1])


def _escaped(char: str, where: str) -> str:
    if char not in _ESCAPED:  # not named in the message: the value may be a secret
        raise SettingsError(
            rf"{where}: in double quotes a backslash escapes only \" \\ \$ \` (Compose and "
            r"systemd read others differently): write \\ for a backslash, or single-quote it"
        )
    return char


def _read_secret(name: str, path: str) -> str:
    try:
        return Path(path).read_text("utf-8-sig").strip()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name}: {path} is not UTF-8 text") from None


def _convert(name: str, raw: str, typ: object) -> object:
    text = raw.strip()
    kind = str(typ)
    try:
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("Path"):
            return Path(text) if text else None
        return text or None if "None" in kind else text
    except ValueError:
        expected = kind.split(" ", maxsplit=1)[0]
        raise SettingsError(f"{name}: expected {expected}, got {raw[:40]!r}") from None
