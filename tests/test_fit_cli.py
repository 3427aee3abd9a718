"""`segment-worker fit` end to end: CDNOW through replay's state file, and the rules it writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest

from worker.cli import main
from worker.core.rules import default_rules_text, load_rules

CDNOW = Path(__file__).parent / "data" / "cdnow_sample.txt"
AS_OF = "1997-09-30T23:00:00Z"


def cdnow_events(path: Path, until: str = "19970930") -> None:
    """The CDNOW calibration period as order events (dollars, paid at noon UTC)."""
    with path.open("wb") as out:
        for i, line in enumerate(CDNOW.read_text().splitlines()):
            _, customer, date, _, amount = line.split()
            if date > until:
                continue
            day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
            event = {
                "type": "order",
                "event_id": f"e{i}",
                "customer_id": customer,
                "occurred_at": f"{day.isoformat()}T12:00:00Z",
                "amount": amount,
                "currency": "USD",
                "status": "paid",
                "order_id": f"o{i}",
            }
            out.write(orjson.dumps(event) + b"\n")


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cdnow")
    cdnow_events(tmp / "events.jsonl")
    state = tmp / "state.jsonl"
    args = ["replay", str(tmp / "events.jsonl"), "--quiet", "--out", str(tmp / "changes.jsonl")]
    assert main([*args, "--state-out", str(state), "--as-of", AS_OF]) == 0
    return state


def test_fit_from_a_state_file_writes_loadable_rules(
    state_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = tmp_path / "rules.toml"
    default.write_bytes(default_rules_text())
    out = tmp_path / "fitted.toml"
    args = ["fit", "--state", str(state_file), "--as-of", AS_OF]
    assert main([*args, "--write-rules", str(default), str(out), "--quantile-scores"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["customers"] == 2357
    assert report["as_of"] == "1997-09-30T23:00:00.000Z"
    bgnbd, spend = report["bgnbd"], report["gamma_gamma"]
    assert bgnbd["r"] == pytest.approx(0.243, rel=0.01)
    assert bgnbd["alpha"] == pytest.approx(4.414 * 7, rel=0.01)
    assert bgnbd["a"] == pytest.approx(0.793, rel=0.01)
    assert bgnbd["b"] == pytest.approx(2.426, rel=0.01)
    assert (spend["p"], spend["q"], spend["v"]) == pytest.approx((6.25, 3.74, 15.44), rel=0.01)
    assert spend["customers"] == 946
    # 60% of the customers have one order: F's percentiles tie and its fixed cuts stay.
    assert report["quantiles"]["f"] == [1, 1, 2, 3]
    rules = load_rules(out)
    assert rules.model is not None
    assert rules.model.bgnbd.r == pytest.approx(bgnbd["r"], rel=1e-5)
    assert rules.model.horizons == (90, 365)
    assert {"predicted_churn", "clv_tier"} <= set(rules.dimension_names)
    assert rules.scores[0].cuts == tuple(report["quantiles"]["r"])
    assert rules.scores[1].cuts == load_rules(None).scores[1].cuts
    # Fitting again over the written file replaces its [model] table, never stacks a second.
    again = tmp_path / "again.toml"
    assert main([*args, "--write-rules", str(out), str(again)]) == 0
    assert again.read_text().splitlines().count("[model]") == 1
    assert load_rules(again).model == rules.model


def test_a_population_too_small_exits_non_zero_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    cdnow_events(events, until="19970101")  # one day: 18 customers
    state = tmp_path / "state.jsonl"
    assert (
        main(
            [
                "replay",
                str(events),
                "--quiet",
                "--state-out",
                str(state),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert main(["fit", "--state", str(state), "--as-of", AS_OF]) == 1
    assert "18 customers with an order: at least 20 needed" in capsys.readouterr().err


def test_a_state_file_is_not_cut_back(state_file: Path) -> None:
    with pytest.raises(SystemExit, match="orders after --as-of"):
        main(["fit", "--state", str(state_file), "--as-of", "1997-03-01T00:00:00Z"])


def test_replay_under_the_fitted_rules_times_the_p_alive_changes(
    state_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fitted rules in replay: P(alive) drops move customers by timer, and each record of
    the state file carries the model's features."""
    default = tmp_path / "rules.toml"
    default.write_bytes(default_rules_text())
    fitted = tmp_path / "fitted.toml"
    args = ["fit", "--state", str(state_file), "--as-of", AS_OF]
    assert main([*args, "--write-rules", str(default), str(fitted)]) == 0
    capsys.readouterr()
    events, changes, state = tmp_path / "e.jsonl", tmp_path / "c.jsonl", tmp_path / "s.jsonl"
    cdnow_events(events)
    replay = ["replay", str(events), "--quiet", "--rules", str(fitted), "--out", str(changes)]
    assert main([*replay, "--state-out", str(state), "--as-of", "1997-12-31T00:00:00Z"]) == 0
    moves = [orjson.loads(line) for line in changes.read_bytes().splitlines()]
    dropped = [
        c
        for c in moves
        if c["dimension"] == "predicted_churn" and c["to"] in ("at_risk", "likely_lost")
    ]
    assert dropped
    for change in dropped:
        if change["cause"]["type"] == "timer":
            assert change["occurred_at"].endswith("T00:00:00.000Z")
            assert change["state"]["p_alive"] < (0.7 if change["to"] == "at_risk" else 0.3)
    assert any(c["cause"]["type"] == "timer" for c in dropped)
    records = [orjson.loads(line) for line in state.read_bytes().splitlines()]
    assert all(0 <= r["p_alive"] <= 1 and r["clv_365d"] >= 0 for r in records)


def test_a_bad_as_of_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--state", "unread.jsonl", "--as-of", "yesterday"])
    assert exited.value.code == 2
    assert "argument --as-of: not an RFC 3339 timestamp" in capsys.readouterr().err


def test_write_rules_refuses_a_rules_file_that_is_not_toml_before_fitting(
    state_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "rules.toml"
    broken.write_text("[orders\n")
    args = ["fit", "--state", str(state_file), "--as-of", AS_OF]
    assert main([*args, "--write-rules", str(broken), str(tmp_path / "out.toml")]) == 2
    captured = capsys.readouterr()
    assert f"segment-worker: invalid rules: {broken}: " in captured.err
    assert captured.out == ""  # refused before the fit


@pytest.mark.parametrize("where", ["missing/out.toml", "."])
def test_write_rules_names_an_output_it_cannot_write(
    state_file: Path, tmp_path: Path, where: str
) -> None:
    default = tmp_path / "rules.toml"
    default.write_bytes(default_rules_text())
    args = ["fit", "--state", str(state_file), "--as-of", AS_OF]
    with pytest.raises(SystemExit, match=f"cannot write {tmp_path / where}"):
        main([*args, "--write-rules", str(default), str(tmp_path / where)])


def test_quantile_scores_without_write_rules_is_a_usage_error(
    state_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", "--state", str(state_file), "--quantile-scores"]) == 2
    assert "--quantile-scores needs --write-rules" in capsys.readouterr().err


def test_write_rules_refuses_yaml_files_it_cannot_edit(
    state_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("orders: {windows: [90]}\n")
    out = tmp_path / "fitted.yaml"
    assert main(["fit", "--state", str(state_file), "--write-rules", str(rules), str(out)]) == 2
    assert "edits TOML rules files" in capsys.readouterr().err
    assert not out.exists()
