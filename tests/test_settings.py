"""Settings come from the environment, fail early naming the variable, and hide secrets."""

from pathlib import Path

import pytest

from worker.settings import OptionError, Settings, SettingsError

DEFAULT_RULES = Path(__file__).parent.parent / "worker/core/default_rules.toml"


def test_defaults_work_with_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.http_port == 8080
    assert (s.topic_orders, s.topic_visits) == ("orders", "visits")


def test_values_are_converted() -> None:
    s = Settings.from_env(
        {
            "SEGMENT_WORKER_HTTP_PORT": "9000",
            "SEGMENT_WORKER_KAFKA_IDEMPOTENCE": "false",
            "SEGMENT_WORKER_RULES": "/etc/rules.toml",
            "SEGMENT_WORKER_CLOCK_SPEED": "86400",
            "SEGMENT_WORKER_TOPIC_REPLICATION": "3",
        }
    )
    assert s.topic_replication == 3
    assert s.http_port == 9000
    assert s.kafka_idempotence is False
    assert s.rules == Path("/etc/rules.toml")
    assert s.clock_speed == 86400.0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SEGMENT_WORKER_HTTP_PORT": "eighty"}, "SEGMENT_WORKER_HTTP_PORT"),
        ({"SEGMENT_WORKER_HTTP_PORT": "70000"}, "SEGMENT_WORKER_HTTP_PORT"),
        ({"SEGMENT_WORKER_HTTP_PORT": "0"}, "SEGMENT_WORKER_HTTP_PORT"),
        ({"SEGMENT_WORKER_BATCH_SIZE": "0"}, "SEGMENT_WORKER_BATCH_SIZE"),
        ({"SEGMENT_WORKER_KAFKA_IDEMPOTENCE": "maybe"}, "SEGMENT_WORKER_KAFKA_IDEMPOTENCE"),
        ({"SEGMENT_WORKER_REDIS_URL": "localhost:6379"}, "SEGMENT_WORKER_REDIS_URL"),
        (
            {"SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL",
        ),
        (
            {"SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "SEGMENT_WORKER_KAFKA_SASL_USERNAME",
        ),
        ({"SEGMENT_WORKER_TOPIC_DLQ": "orders"}, "SEGMENT_WORKER_TOPIC_"),
        ({"SEGMENT_WORKER_TOPIC_CLASSES": "segment-changes"}, "SEGMENT_WORKER_TOPIC_"),
        ({"SEGMENT_WORKER_TOPIC_REPLICATION": "0"}, "SEGMENT_WORKER_TOPIC_REPLICATION"),
        ({"SEGMENT_WORKER_ERASURE_MARKER_DAYS": "-5"}, "SEGMENT_WORKER_ERASURE_MARKER_DAYS"),
        (
            {"SEGMENT_WORKER_RULES_REEVALUATION_RATE": "0"},
            "SEGMENT_WORKER_RULES_REEVALUATION_RATE",
        ),
        ({"SEGMENT_WORKER_REDIS_PREFIX": ""}, "SEGMENT_WORKER_REDIS_PREFIX"),
        ({"SEGMENT_WORKER_REDIS_PREFIX": "sw{x}"}, "SEGMENT_WORKER_REDIS_PREFIX"),
        ({"SEGMENT_WORKER_GROUP_ID": ""}, "SEGMENT_WORKER_GROUP_ID"),
        ({"SEGMENT_WORKER_KAFKA_BOOTSTRAP": "localhost:abc"}, "SEGMENT_WORKER_KAFKA_BOOTSTRAP"),
        ({"SEGMENT_WORKER_BACTH_SIZE": "10"}, "SEGMENT_WORKER_BACTH_SIZE"),
        ({"SEGMENT_WORKER_HEARTBEAT_INTERVAL_MS": "20000"}, "SEGMENT_WORKER_HEARTBEAT_INTERVAL_MS"),
        (
            {"SEGMENT_WORKER_KAFKA_SASL_PASSWORD_FILE": "/nonexistent"},
            "SEGMENT_WORKER_KAFKA_SASL_PASSWORD_FILE",
        ),
    ],
)
def test_bad_settings_fail_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize("url", ["redis://u:pw@[::1", "redis://u:pw@host:port/0"])
def test_a_redis_url_that_does_not_parse_is_named_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError, match="SEGMENT_WORKER_REDIS_URL") as raised:
        Settings.from_env({"SEGMENT_WORKER_REDIS_URL": url})
    assert "pw" not in str(raised.value)


def test_a_secret_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_bytes(b"\xff\xfe binary")
    with pytest.raises(SettingsError, match=r"SEGMENT_WORKER_PSEUDONYM_KEY_FILE: .*UTF-8"):
        Settings.from_env({"SEGMENT_WORKER_PSEUDONYM_KEY_FILE": str(secret)})


def test_secrets_from_files_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    s = Settings.from_env(
        {
            "SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SEGMENT_WORKER_KAFKA_SASL_USERNAME": "worker",
            "SEGMENT_WORKER_KAFKA_SASL_PASSWORD_FILE": str(secret),
            "SEGMENT_WORKER_REDIS_URL": "rediss://worker:s3cret@redis:6380/0",
        }
    )
    assert s.kafka_sasl_password == "hunter2"
    shown = repr(s) + str(s.describe())
    assert "hunter2" not in shown
    assert "s3cret" not in shown


def test_the_http_token_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-3x4mple\n")  # as a mounted Kubernetes Secret ends
    s = Settings.from_env({"SEGMENT_WORKER_HTTP_TOKEN_FILE": str(token)})
    assert s.http_token == "tok-3x4mple"
    shown = {name: value for name, value, _ in s.describe()}
    assert shown["SEGMENT_WORKER_HTTP_TOKEN"] == "(set)"
    assert "tok-3x4mple" not in repr(s) + str(s.describe())
    assert Settings.from_env({"SEGMENT_WORKER_HTTP_TOKEN": ""}).http_token is None  # off


def test_run_refuses_to_start_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    monkeypatch.setenv("SEGMENT_WORKER_BATCH_SIZE", "lots")
    assert main(["run"]) == 2
    assert "SEGMENT_WORKER_BATCH_SIZE" in capsys.readouterr().err


def test_run_refuses_an_unknown_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--log-level", "BOGUS"])
    assert exited.value.code == 2
    assert "--log-level" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["erase", "cus_a"],
        ["customer", "cus_a", "--partitions", "4"],
        ["forget", "cus_a", "--partitions", "4"],
        ["rules", "diff", str(DEFAULT_RULES), "--redis", "redis://127.0.0.1:1/0"],
        ["fit", "--redis", "redis://127.0.0.1:1/0"],
    ],
)
def test_every_command_with_the_settings_of_run_refuses_a_bad_one(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    monkeypatch.setenv("SEGMENT_WORKER_BATCH_SIZE", "lots")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("segment-worker: bad setting:") and "SEGMENT_WORKER_BATCH_SIZE" in err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["redis", "recount", "--redis-url", "BAD"], "--redis-url"),
        (["redis", "install", "--redis-url", "BAD"], "--redis-url"),
        (["rules", "diff", str(DEFAULT_RULES), "--redis", "BAD"], "--redis"),
        (["fit", "--redis", "BAD"], "--redis"),
        (["fit", "--redis", "redis://127.0.0.1:1/0", "--prefix", "a b"], "--prefix"),
        (["demo", "--redis", "BAD", "--kafka", "127.0.0.1:1"], "--redis"),  # nothing started
        (["demo", "--kafka", "BAD", "--redis", "redis://127.0.0.1:1/0"], "--kafka"),
        (["changes", "--kafka", "BAD"], "--kafka"),
        (["produce", "--kafka", "BAD", "events.jsonl"], "--kafka"),
    ],
)
def test_a_bad_option_for_a_setting_is_named_as_typed(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segment-worker: {option}: expected ") and "SEGMENT_WORKER" not in err


def test_an_option_for_a_setting_is_checked_with_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the environment's own URL (here the default redis://) is not the one used
    from worker.cli.common import redis_settings

    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    monkeypatch.setenv("SEGMENT_WORKER_REDIS_TLS_CAFILE", str(ca))
    url = "rediss://redis:6380/0"
    assert redis_settings(url, option="--redis-url").redis_url == url
    with pytest.raises(OptionError, match=r"^--redis-url: TLS files are set, so use rediss://$"):
        redis_settings("redis://redis:6379/0", option="--redis-url")


def test_run_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name, _, _ in Settings().describe():
        assert name in text


def test_to_env_round_trips(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    s = Settings(batch_size=77, kafka_idempotence=False, rules=rules, pseudonym_key="k" * 32)
    assert Settings.from_env(s.to_env()) == s


def test_a_pseudonym_key_needs_32_bytes() -> None:
    with pytest.raises(SettingsError, match="PSEUDONYM_KEY: at least 32 bytes, got 1"):
        Settings.from_env({"SEGMENT_WORKER_PSEUDONYM_KEY": "k"})
    with pytest.raises(SettingsError, match="got 31"):
        Settings(pseudonym_key="k" * 31)
    assert Settings(pseudonym_key="é" * 16).pseudonym_key  # bytes, not characters


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SEGMENT_WORKER_REDIS_URL": "localhost:6379"}, ["redis://", "rediss://", "unix://"]),
        ({"SEGMENT_WORKER_KAFKA_BOOTSTRAP": "kafka"}, ["HOST:PORT"]),
        ({"SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL": "TLS"}, ["SASL_SSL", "'TLS'"]),
        ({"SEGMENT_WORKER_BATCH_SIZE": "0"}, ["1..100000", "got 0"]),
        ({"SEGMENT_WORKER_BATCH_LINGER_MS": "5000"}, ["0..1000", "got 5000"]),
    ],
)
def test_a_bad_value_is_told_what_is_expected(env: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    for text in expected:
        assert text in str(caught.value)


def test_a_bad_redis_url_is_echoed_without_its_password() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SEGMENT_WORKER_REDIS_URL": "http://worker:s3cret@redis:6379/0"})
    assert "s3cret" not in str(caught.value)
    assert "worker:***@redis:6379" in str(caught.value)


def test_a_password_in_the_query_string_is_masked_too() -> None:
    url = "unix:///run/redis.sock?db=1&password=s3cret"
    shown = {name: value for name, value, _ in Settings(redis_url=url).describe()}
    assert shown["SEGMENT_WORKER_REDIS_URL"] == "unix:///run/redis.sock?db=1&password=***"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SEGMENT_WORKER_REDIS_URL": "http://redis:6379/0?password=s3cret"})
    assert "s3cret" not in str(caught.value)


def test_describe_shows_defaults_and_marks_only_secrets_that_are_set() -> None:
    shown = {name: value for name, value, _ in Settings().describe()}
    assert shown["SEGMENT_WORKER_REDIS_URL"] == "redis://localhost:6379/0"
    assert shown["SEGMENT_WORKER_KAFKA_SASL_PASSWORD"] == "(not set)"
    configured = Settings(
        redis_url="redis://worker:s3cret@redis:6379/0", kafka_sasl_password="pw"
    ).describe()
    shown = {name: value for name, value, _ in configured}
    assert shown["SEGMENT_WORKER_REDIS_URL"] == "redis://worker:***@redis:6379/0"
    assert shown["SEGMENT_WORKER_KAFKA_SASL_PASSWORD"] == "(set)"


def test_the_http_port_binds_loopback_unless_told_otherwise() -> None:
    assert Settings.from_env({}).http_host == "127.0.0.1"
    assert Settings.from_env({"SEGMENT_WORKER_HTTP_HOST": "0.0.0.0"}).http_host == "0.0.0.0"


def test_change_signing_keys_from_files_long_enough_and_never_shown(tmp_path: Path) -> None:
    new, old = "n" * 40, "o" * 32
    (tmp_path / "key").write_text(new + "\n")
    s = Settings.from_env(
        {
            "SEGMENT_WORKER_CHANGE_SIGNING_KEY_FILE": str(tmp_path / "key"),
            "SEGMENT_WORKER_CHANGE_SIGNING_PREVIOUS_KEY": old,
        }
    )
    assert s.signing_keys() == (new.encode(), old.encode())  # the signing one first
    assert Settings().signing_keys() == ()
    shown = repr(s) + str(s.describe())
    assert new not in shown and old not in shown
    short = "s" * 31
    with pytest.raises(
        SettingsError, match="CHANGE_SIGNING_KEY: expected at least 32 bytes"
    ) as err:
        Settings.from_env({"SEGMENT_WORKER_CHANGE_SIGNING_KEY": short})
    assert short not in str(err.value)
    with pytest.raises(SettingsError, match="set CHANGE_SIGNING_KEY too"):
        Settings.from_env({"SEGMENT_WORKER_CHANGE_SIGNING_PREVIOUS_KEY": old})


def test_a_settings_file_gives_what_the_environment_does_not(tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text("redis://worker:pw@redis:6379/0\n")
    path = tmp_path / "worker.env"
    path.write_text(
        "# segment-worker\n\n"
        "SEGMENT_WORKER_BATCH_SIZE=250\n"
        "export SEGMENT_WORKER_GROUP_ID = 'shop-a'\n"
        'SEGMENT_WORKER_KAFKA_BOOTSTRAP="kafka-1:9092,kafka-2:9092"\n'
        f"SEGMENT_WORKER_REDIS_URL_FILE={secret}\n"
        "SEGMENT_WORKER_HTTP_PORT=9100\n"
    )
    s = Settings.from_env(
        {"SEGMENT_WORKER_SETTINGS_FILE": str(path), "SEGMENT_WORKER_HTTP_PORT": "9200"}
    )
    assert (s.batch_size, s.group_id, s.http_port) == (250, "shop-a", 9200)  # the env wins
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.redis_url == "redis://worker:pw@redis:6379/0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SEGMENT_WORKER_BATCH_SIZE\n", r"worker\.env:1: expected SEGMENT_WORKER_NAME=value"),
        ("\nSEGMENT_WORKER_BACH_SIZE=5\n", r"worker\.env:2: SEGMENT_WORKER_BACH_SIZE: unknown"),
        ("REDIS_URL=redis://x:6379/0\n", r"worker\.env:1: REDIS_URL: unknown setting"),
        ("SEGMENT_WORKER_GROUP_ID=a\nSEGMENT_WORKER_GROUP_ID=b\n", r"worker\.env:2: .* twice"),
        ("SEGMENT_WORKER_BATCH_SIZE=lots\n", "SEGMENT_WORKER_BATCH_SIZE: expected int"),
        ('SEGMENT_WORKER_GROUP_ID="a\n', r"worker\.env:1: SEGMENT_WORKER_GROUP_ID: .*not closed"),
        ("\nSEGMENT_WORKER_GROUP_ID='a\n", r"worker\.env:2: .*' quote is not closed"),
        ('SEGMENT_WORKER_GROUP_ID="a\\"\n', r"worker\.env:1: .*\" quote is not closed"),
        ('SEGMENT_WORKER_GROUP_ID="a" # b\n', r"worker\.env:1: .*text after .* closing quote"),
        ('SEGMENT_WORKER_GROUP_ID="a\\nb"\n', r"worker\.env:1: .*backslash escapes only"),
    ],
)
def test_a_bad_settings_file_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "worker.env"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"SEGMENT_WORKER_SETTINGS_FILE": str(path)})


def test_a_settings_files_quotes_are_read_as_compose_and_systemd_read_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.env"
    lines = [
        r'SEGMENT_WORKER_GROUP_ID="a\"b\\c\$d\`e"',
        r"SEGMENT_WORKER_TOPIC_DLQ='x\\\"y $z'",  # single quotes: as written
    ]
    path.write_text("\n".join(lines))
    s = Settings.from_env({"SEGMENT_WORKER_SETTINGS_FILE": str(path)})
    assert s.group_id == 'a"b\\c$d`e'
    assert s.topic_dlq == r"x\\\"y $z"


def test_an_unreadable_settings_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"SEGMENT_WORKER_SETTINGS_FILE: cannot read .*nope"):
        Settings.from_env({"SEGMENT_WORKER_SETTINGS_FILE": str(tmp_path / "nope")})
    latin = tmp_path / "latin.env"
    latin.write_bytes(b"SEGMENT_WORKER_GROUP_ID=caf\xe9\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        Settings.from_env({"SEGMENT_WORKER_SETTINGS_FILE": str(latin)})


def test_the_environments_secret_file_wins_over_the_settings_files_value(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-the-secret\n")
    path = tmp_path / "worker.env"
    path.write_text("SEGMENT_WORKER_HTTP_TOKEN=dev-token\n")
    env = {"SEGMENT_WORKER_SETTINGS_FILE": str(path), "SEGMENT_WORKER_HTTP_TOKEN_FILE": str(token)}
    assert Settings.from_env(env).http_token == "from-the-secret"


def test_a_setting_and_its_file_variant_together_are_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    env = {"SEGMENT_WORKER_HTTP_TOKEN": "t2", "SEGMENT_WORKER_HTTP_TOKEN_FILE": str(token)}
    with pytest.raises(
        SettingsError, match=r"SEGMENT_WORKER_HTTP_TOKEN: set it or .*_FILE, not both"
    ):
        Settings.from_env(env)


def test_a_settings_file_may_start_with_a_byte_order_mark_and_use_tabs(tmp_path: Path) -> None:
    path = tmp_path / "worker.env"
    path.write_bytes(
        b"\xef\xbb\xbfSEGMENT_WORKER_GROUP_ID=a\r\nexport\tSEGMENT_WORKER_BATCH_SIZE=9\r\n"
    )
    s = Settings.from_env({"SEGMENT_WORKER_SETTINGS_FILE": str(path)})
    assert (s.group_id, s.batch_size) == ("a", 9)


def test_a_secret_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_bytes(b"\xef\xbb\xbfredis://redis:6379/2\r\n")
    env = {"SEGMENT_WORKER_REDIS_URL_FILE": str(secret)}
    assert Settings.from_env(env).redis_url == "redis://redis:6379/2"
