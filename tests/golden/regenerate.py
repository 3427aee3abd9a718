"""Regenerate the golden files, but only with output the independent oracle agrees with.

    python -m tests.golden.regenerate

Replays scenario.jsonl as ``segment-worker replay tests/golden/scenario.jsonl --as-of
2027-02-01T00:00:00Z`` does (from the repository root), checks the changes, rejects and final
states against tests/oracle.py, and writes changes.jsonl, state.jsonl and rejects.jsonl only
if they agree; otherwise it prints each disagreement and writes nothing. A bug in the core
therefore cannot be blessed by regenerating. tests/test_replay_cli.py runs the same check on
the committed files on every run.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from tests.oracle import DAY, ms_of, run_oracle
from worker.cli import main as cli
from worker.core.rules import load_rules

GOLDEN = Path(__file__).parent
ROOT = GOLDEN.parent.parent
SCENARIO = "tests/golden/scenario.jsonl"  # as the rejects name it: relative to ROOT
AS_OF = "2027-02-01T00:00:00Z"
NAMES = ("changes", "state", "rejects")
HORIZON_DAYS = 800  # next_change_at null: no class may change within this many days


def replay_scenario(out_dir: Path) -> dict[str, bytes]:
    """The replay command's three outputs for the scenario."""
    outputs = {name: out_dir / f"{name}.jsonl" for name in NAMES}
    args = ["replay", SCENARIO, "--quiet", "--as-of", AS_OF, "--out", str(outputs["changes"])]
    args += ["--state-out", str(outputs["state"]), "--rejects", str(outputs["rejects"])]
    with contextlib.chdir(ROOT):
        code = cli(args)
    if code != 0:
        raise SystemExit(f"replay exited with {code}")
    return {name: path.read_bytes() for name, path in outputs.items()}


def disagreements(outputs: Mapping[str, bytes]) -> list[str]:
    """Where ``outputs`` (replay's three files) differ from the oracle; empty if nowhere."""
    lines = (GOLDEN / "scenario.jsonl").read_bytes().splitlines()
    now_ms = time.time_ns() // 1_000_000  # replay's future-timestamp limit is the wall clock
    oracle = run_oracle(lines, ms_of(AS_OF), load_rules(None).version, now_ms)
    problems = []
    got = outputs["changes"].splitlines()
    want = [orjson.dumps(change) for change in oracle.changes]
    for i, (line, expected) in enumerate(zip(got, want, strict=False)):
        if line != expected:
            problems.append(f"changes line {i + 1}: replay {line!r}, oracle {expected!r}")
    if len(got) != len(want):
        problems.append(f"changes: replay has {len(got)} lines, the oracle {len(want)}")
    rejects = [orjson.loads(line) for line in outputs["rejects"].splitlines()]
    found = [(r["source"]["line"], r["reason"], r["field"]) for r in rejects]
    if found != oracle.rejects:
        problems.append(f"rejects: replay {found}, oracle {oracle.rejects}")
    states = [orjson.loads(line) for line in outputs["state"].splitlines()]
    if [s["customer_id"] for s in states] != sorted(oracle.customers):
        problems.append(f"state: customers {[s['customer_id'] for s in states]}")
        return problems
    assert oracle.clock is not None
    today = oracle.clock // DAY
    for record in states:
        cid = record["customer_id"]
        due = record.pop("next_change_at")
        expected_record = oracle.state_out(cid)
        if list(record.items()) != list(expected_record.items()):
            problems.append(f"state of {cid}: replay {record}, oracle {expected_record}")
        due_day = today + HORIZON_DAYS if due is None else ms_of(due) // DAY
        changes_at = oracle.first_change_day(cid, due_day)
        if changes_at is not None or due_day <= today:
            problems.append(
                f"state of {cid}: next_change_at {due}, but a class changes on day {changes_at}"
            )
    return problems


def write_if_agreed(outputs: Mapping[str, bytes], target: Path) -> list[str]:
    """Write ``outputs`` into ``target`` unless the oracle disagrees; the disagreements."""
    problems = disagreements(outputs)
    if not problems:
        for name in NAMES:
            (target / f"{name}.jsonl").write_bytes(outputs[name])
    return problems


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        problems = write_if_agreed(replay_scenario(Path(tmp)), GOLDEN)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("the oracle disagrees with replay: golden files NOT written", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(f'{n}.jsonl' for n in NAMES)} in {GOLDEN}: the oracle agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
