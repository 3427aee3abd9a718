"""The replay command end to end: golden files, determinism, rejects, errors."""

from pathlib import Path

import orjson
import pytest

from tests.core.test_rules import CRASHING
from tests.golden.regenerate import NAMES, disagreements, replay_scenario, write_if_agreed
from worker.cli import main
from worker.core.rules import default_rules_text

GOLDEN = Path(__file__).parent / "golden"


def run_replay(tmp_path: Path, events: str, *extra: str) -> dict[str, bytes]:
    outputs = {name: tmp_path / f"{name}.jsonl" for name in ("changes", "state", "rejects")}
    code = main(
        [
            "replay",
            events,
            "--quiet",
            "--out",
            str(outputs["changes"]),
            "--state-out",
            str(outputs["state"]),
            "--rejects",
            str(outputs["rejects"]),
            *extra,
        ]
    )
    assert code == 0
    return {name: path.read_bytes() for name, path in outputs.items()}


def test_golden_scenario(tmp_path: Path) -> None:
    """A hand-checked story (tests/golden/README.md): the committed files are what replay
    outputs now and what the independent oracle says. Regenerate them only with
    `python -m tests.golden.regenerate`, which refuses output the oracle disagrees with."""
    golden = {name: (GOLDEN / f"{name}.jsonl").read_bytes() for name in NAMES}
    assert disagreements(golden) == []
    got = replay_scenario(tmp_path)
    for name in NAMES:
        assert got[name] == golden[name], f"{name} differs from tests/golden/{name}.jsonl"


def test_golden_regeneration_refuses_what_the_oracle_disagrees_with(tmp_path: Path) -> None:
    golden = {name: (GOLDEN / f"{name}.jsonl").read_bytes() for name in NAMES}
    tampered = [
        {**golden, "changes": golden["changes"].replace(b'"to":"high"', b'"to":"medium"', 1)},
        {**golden, "changes": b"\n".join(golden["changes"].splitlines()[:-1]) + b"\n"},
        {**golden, "state": golden["state"].replace(b'"orders_90d":0', b'"orders_90d":1', 1)},
        {**golden, "rejects": b"\n".join(golden["rejects"].splitlines()[1:]) + b"\n"},
    ]
    for outputs in tampered:
        assert outputs != golden
        assert write_if_agreed(outputs, tmp_path)
        assert list(tmp_path.iterdir()) == []
    assert write_if_agreed(golden, tmp_path) == []
    assert {name: (tmp_path / f"{name}.jsonl").read_bytes() for name in NAMES} == golden


def assert_golden(got: dict[str, bytes], folder: Path) -> None:
    for name, data in got.items():
        golden = folder / f"{name}.jsonl"
        assert data == golden.read_bytes(), f"{name} differs from {golden}"


def shanghai_rules(folder: Path) -> Path:
    """The default rules on Asia/Shanghai's calendar (a copy would drift from the defaults)."""
    rules = folder / "shanghai.toml"
    text = default_rules_text().replace(b'timezone = "UTC"', b'timezone = "Asia/Shanghai"')
    assert text != default_rules_text()
    rules.write_bytes(text)
    return rules


def test_golden_shanghai_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shop in Beijing (tests/golden/shanghai/README.md): local dates, key actions, partial
    refunds. Its changes are checked against the oracle on its calendar in test_oracle.py."""
    monkeypatch.chdir(GOLDEN.parent.parent)
    rules = shanghai_rules(tmp_path)
    got = run_replay(
        tmp_path,
        "tests/golden/shanghai/scenario.jsonl",
        "--rules",
        str(rules),
        "--as-of",
        "2027-01-01T00:00:00+08:00",
    )
    assert_golden(got, GOLDEN / "shanghai")


def test_golden_story_highlights() -> None:
    """The golden file says what the README promises, not just what the code did once."""
    changes = [orjson.loads(line) for line in (GOLDEN / "changes.jsonl").read_bytes().splitlines()]
    moves = {
        (c["customer_id"], c["dimension"], c["from"], c["to"], c["cause"]["type"]) for c in changes
    }
    assert ("bob", "lifecycle", None, "potential", "visit") in moves
    assert ("alice", "lifecycle", "churned", "returning", "order") in moves
    assert ("alice", "lifecycle", "active", "churn_risk", "timer") in moves
    assert ("carol", "value_tier", "medium", "high", "order") in moves
    # The refund of C4 takes carol back from 5 orders to 4: F score 4 -> 3.
    assert ("carol", "rfm", "loyal", "potential_loyalist", "order") in moves

    # The value-tier and old-customer boundaries, as the source material defines them.
    def steps(customer: str, dimension: str) -> list[tuple[object, ...]]:
        return [
            (c["to"], c["state"]["orders_90d"], c["state"]["spend_90d"])
            for c in changes
            if (c["customer_id"], c["dimension"]) == (customer, dimension)
        ]

    assert steps("frank", "value_tier") == [("low", 1, "30.00")]  # 5 orders, 150: still low
    assert steps("grace", "value_tier") == [
        ("low", 1, "60.00"),
        ("medium", 3, "100.01"),  # 2 orders at 100.00 stayed low
        ("low", 4, "200.00"),
        ("high", 5, "200.01"),
        ("low", 4, "140.01"),  # her first order left the window
        ("medium", 3, "100.01"),
        ("low", 2, "100.00"),
    ]
    assert steps("heidi", "old_customer") == []  # 2 orders, 40.00
    assert steps("ivan", "old_customer") == [("in", 2, "40.01")]
    # Dave's order was cancelled before its payment arrived: it never counts.
    assert not any(c["customer_id"] == "dave" for c in changes)
    # The duplicate of o2 changed nothing: exactly one first classification per dimension.
    firsts = [c for c in changes if c["customer_id"] == "alice" and c["from"] is None]
    assert len(firsts) == len({c["dimension"] for c in firsts})
    for c in changes:
        if c["cause"]["type"] == "timer":
            assert c["occurred_at"].endswith("T00:00:00.000Z")
            assert c["cause"]["event_id"] is None


def test_rejects_name_line_reason_and_field() -> None:
    rejects = [orjson.loads(line) for line in (GOLDEN / "rejects.jsonl").read_bytes().splitlines()]
    got = [(r["source"]["line"], r["reason"], r["field"]) for r in rejects]
    assert got == [
        (13, "negative_amount", "amount"),
        (14, "unsupported_currency", "currency"),
        (15, "invalid_timestamp", "occurred_at"),
        (16, "missing_field", "action"),
        (17, "invalid_json", None),
    ]


def test_replay_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    assert (
        main(
            ["simulate", "--events", "3000", "--customers", "200", "--faults", "--out", str(events)]
        )
        == 0
    )
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        runs.append(run_replay(tmp_path / name, str(events)))
    first, second = runs
    assert first == second
    assert first["changes"] and first["rejects"]


def test_summary_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["replay", str(GOLDEN / "scenario.jsonl"), "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "33 lines, 28 applied, 5 rejected" in err
    assert "negative_amount=1" in err


def test_the_summary_names_rejects_when_lines_were_rejected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["replay", str(GOLDEN / "scenario.jsonl"), "--out", str(tmp_path / "c")]) == 0
    assert "--rejects FILE" in capsys.readouterr().err
    rejects = tmp_path / "rejects.jsonl"
    args = ["--out", str(tmp_path / "c"), "--rejects", str(rejects)]
    assert main(["replay", str(GOLDEN / "scenario.jsonl"), *args]) == 0
    assert "--rejects FILE" not in capsys.readouterr().err  # given: nothing to point at


def test_an_as_of_before_the_input_end_is_said_not_silently_ignored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["replay", str(GOLDEN / "scenario.jsonl"), "--out", str(tmp_path / "c")]
    assert main([*args, "--as-of", "2000-01-01T00:00:00Z"]) == 0
    assert "--as-of is before the input's last event" in capsys.readouterr().err
    assert main([*args, "--as-of", "2099-01-01T00:00:00Z"]) == 0
    assert "--as-of is before" not in capsys.readouterr().err


def test_an_events_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    plain = (GOLDEN / "scenario.jsonl").read_bytes()
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + plain)
    outs = []
    for path in (GOLDEN / "scenario.jsonl", marked):
        out = tmp_path / f"{path.stem}.out"
        assert main(["replay", str(path), "--out", str(out), "--quiet"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_strict_fails_on_any_rejected_line(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "c"), "--quiet", "--strict"]
    assert main(["replay", str(GOLDEN / "scenario.jsonl"), *out]) == 1
    clean = tmp_path / "clean.jsonl"
    lines = (GOLDEN / "scenario.jsonl").read_bytes().splitlines(keepends=True)
    clean.write_bytes(b"".join(lines[:12]))  # the rejected lines are 13..17
    assert main(["replay", str(clean), *out]) == 0


def test_an_unreadable_events_file_fails_clearly() -> None:
    with pytest.raises(SystemExit, match="cannot read"):
        main(["replay", "/nonexistent/events.jsonl"])


@pytest.mark.parametrize("option", ["--out", "--state-out", "--rejects"])
@pytest.mark.parametrize("where", ["missing/x.jsonl", "."])
def test_an_output_it_cannot_write_is_named_before_replaying(
    tmp_path: Path, option: str, where: str
) -> None:
    changes = tmp_path / "changes.jsonl"
    args = ["replay", "--sample", "--quiet", "--out", str(changes), option, str(tmp_path / where)]
    with pytest.raises(SystemExit, match=f"cannot write {tmp_path / where}"):
        main(args)
    assert not changes.exists() or changes.read_bytes() == b""  # nothing was replayed


@pytest.mark.parametrize("where", ["missing/x.jsonl", "."])
def test_simulate_names_an_output_it_cannot_write(tmp_path: Path, where: str) -> None:
    with pytest.raises(SystemExit, match=f"cannot write {tmp_path / where}"):
        main(["simulate", "--events", "10", "--out", str(tmp_path / where)])


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--sample", "--as-of", "yesterday"],
        ["rules", "diff", str(GOLDEN / "scenario.jsonl"), "--events", "-", "--as-of", "yesterday"],
    ],
)
def test_a_bad_as_of_is_refused_by_the_parser(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--as-of" in err and "RFC 3339" in err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["replay", "--sample", "--max-bytes", "-1"], "--max-bytes"),
        (["replay", "--sample", "--max-bytes", "0"], "--max-bytes"),
        (["replay", "--sample", "--future-skew", "-5"], "--future-skew"),
        (["replay", "--sample", "--future-skew", "nan"], "--future-skew"),
        (["demo", "--duration", "-1"], "--duration"),
    ],
)
def test_a_negative_limit_is_a_usage_error(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_bad_rules_file_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[orders]\ncount_status = "shipped"\n')
    assert main(["rules", "check", str(rules)]) == 2
    assert "count_status" in capsys.readouterr().err


def test_rules_check_prints_every_error_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[orders]\ncount_status = "shipped"\n[money]\nbase_currency = "usd"\n'
        '[[segments]]\nname = "any"\nwhen = "has_order"\n'
    )
    assert main(["rules", "check", str(rules)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[3] for line in lines] == ["orders.count_status", "money.base_currency"]
    assert all(line.startswith("segment-worker: invalid rules: ") for line in lines)


def test_sample_replays(tmp_path: Path) -> None:
    out = tmp_path / "changes.jsonl"
    assert main(["replay", "--sample", "--quiet", "--out", str(out)]) == 0
    assert len(out.read_bytes().splitlines()) > 500


def test_rules_diff_from_an_events_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "new.toml"
    text = (Path(__file__).parent.parent / "worker/core/default_rules.toml").read_text()
    new.write_text(text.replace('orders_total >= 3" }', 'orders_total >= 2" }'))
    code = main(["rules", "diff", str(new), "--events", str(GOLDEN / "scenario.jsonl"), "--json"])
    assert code == 0
    out = orjson.loads(capsys.readouterr().out)
    # Alice, heidi and ivan (2 orders each) become members; carol, frank and grace already
    # are; nothing else moves.
    assert out["membership"] == [{"from": "ordinary", "to": "member", "customers": 3}]
    assert all(not moves for dim, moves in out.items() if dim != "membership")


@pytest.mark.parametrize("events", ["missing.jsonl", "."])
def test_rules_diff_names_an_events_file_it_cannot_read(tmp_path: Path, events: str) -> None:
    rules = str(Path(__file__).parent.parent / "worker/core/default_rules.toml")
    with pytest.raises(SystemExit, match="cannot read"):
        main(["rules", "diff", rules, "--events", str(tmp_path / events)])


@pytest.mark.parametrize("name", sorted(CRASHING))
def test_rules_that_would_crash_are_refused_by_check_and_replay(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each file once passed `rules check` and then killed replay (and the live worker) on
    the first classification or the first EUR order; now both refuse it up front."""
    rules = tmp_path / "rules.toml"
    rules.write_text(CRASHING[name][0])
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"type":"order","event_id":"e1","customer_id":"c","occurred_at":"2026-01-01T10:00:00Z",'
        b'"amount":"5.00","currency":"EUR","status":"paid"}\n'
        b'{"type":"visit","event_id":"v1","customer_id":"c","occurred_at":"2026-01-02T10:00:00Z",'
        b'"action":"login","region":"EU"}\n'
    )
    assert main(["rules", "check", str(rules)]) == 2
    assert "invalid rules" in capsys.readouterr().err
    out = tmp_path / "changes.jsonl"
    assert main(["replay", str(events), "--quiet", "--rules", str(rules), "--out", str(out)]) == 2
    assert "invalid rules" in capsys.readouterr().err
    assert not out.exists()


def test_rules_check_refuses_an_unknown_time_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[calendar]\ntimezone = "Asia/Beijing"\n')
    assert main(["rules", "check", str(rules)]) == 2
    assert "calendar.timezone: unknown time zone 'Asia/Beijing'" in capsys.readouterr().err
    rules.write_text(
        '[calendar]\ntimezone = "Asia/Shanghai"\n[[segments]]\nname = "any"\nwhen = "has_order"\n'
    )
    assert main(["rules", "check", str(rules)]) == 0
    assert "calendar: Asia/Shanghai; key actions: add_to_cart, app_open" in capsys.readouterr().out
