"""Does the test suite catch the bugs that matter? Apply each deliberate bug to a scratch copy.

    python scripts/mutation_check.py            # every mutation
    python scripts/mutation_check.py --list     # their names
    python scripts/mutation_check.py --only window_one_day_wide --only dedupe_off

Each mutation is one exact text edit (thresholds off by one, a window one day wide of the
mark, refunds or cancels no longer uncounting an order, duplicates counted again, the due-day
search skipping tomorrow, the Redis Function's offset and epoch fences) applied to a fresh
copy of the working tree; then the fast tests that should notice run there (pytest -x). A
mutation is caught when pytest reports failing tests (exit status 1). The script first checks
that the unmutated copy passes the same tests, reports caught/missed per mutation, and exits
non-zero unless every mutation was caught. Not part of the default test command: it takes
minutes. The Lua mutations need redis-server on PATH (tests/integration/test_store.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = ("tests/core", "tests/test_replay_cli.py", "tests/test_oracle.py")
STORE = ("tests/integration/test_store.py",)
DUE_INDEX = ("tests/integration/test_due_index.py", "tests/integration/test_store.py")
RULES = "worker/core/default_rules.toml"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = FAST
    count: int | None = 1  # how many times ``old`` occurs (None: any); all are replaced


def threshold(name: str, old: str, new: str) -> Mutation:
    """An off-by-one in a condition of the default rules."""
    return Mutation(name, RULES, old, new)


MUTATIONS: tuple[Mutation, ...] = (
    threshold("high_spend_ge", "spend_90d > 200", "spend_90d >= 200"),
    threshold("high_orders_gt", "orders_90d >= 4", "orders_90d > 4"),
    threshold("medium_spend_ge", "spend_90d > 100", "spend_90d >= 100"),
    threshold("medium_no_upper_bound", "2 <= orders_90d <= 3", "2 <= orders_90d"),
    threshold("medium_lower_bound_gt", "2 <= orders_90d <= 3", "2 < orders_90d <= 3"),
    threshold("old_customer_ge", "monetary_total > 40", "monetary_total >= 40"),
    threshold(
        "old_customer_orders_gt", "orders_total >= 2 and monetary", "orders_total > 2 and monetary"
    ),
    threshold("churned_ge", "not days_since_last_order <= 180", "not days_since_last_order < 180"),
    threshold(
        "churned_key_action_ge",
        "not days_since_last_key_action <= 180",
        "not days_since_last_key_action < 180",
    ),
    threshold(
        "active_key_action_lt",
        "days_since_last_key_action <= 30",
        "days_since_last_key_action < 30",
    ),
    threshold("potential_visit_lt", "days_since_last_visit <= 180", "days_since_last_visit < 180"),
    threshold("active_lt", "days_since_last_order <= 60", "days_since_last_order < 60"),
    threshold("new_lt", "days_since_first_order <= 30", "days_since_first_order < 30"),
    threshold("returning_gap_ge", "last_order_gap_days > 180", "last_order_gap_days >= 180"),
    threshold("returning_recent_lt", "days_since_last_order <= 30", "days_since_last_order < 30"),
    threshold("tenure_long_ge", "days_since_first_order > 365", "days_since_first_order >= 365"),
    threshold("tenure_mid_ge", "days_since_first_order > 90", "days_since_first_order >= 90"),
    threshold("super_member_gt", "orders_total >= 10", "orders_total > 10"),
    threshold("member_gt", "orders_total >= 3", "orders_total > 3"),
    Mutation(
        "score_higher_cut_exclusive",
        "worker/core/features.py",
        'value = f"1 + _br(_cuts{i}, v)"',
        'value = f"1 + _bl(_cuts{i}, v)"',
    ),
    Mutation(
        "score_lower_cut_exclusive",
        "worker/core/features.py",
        'value = f"{len(score.cuts) + 1} - _bl(_cuts{i}, v)"',
        'value = f"{len(score.cuts) + 1} - _br(_cuts{i}, v)"',
    ),
    Mutation(
        "window_one_day_short",
        "worker/core/features.py",
        "window = days[_bl(days, day - {n - 1}, 0, day_hi) : day_hi]",
        "window = days[_bl(days, day - {n - 2}, 0, day_hi) : day_hi]",
    ),
    Mutation(
        "window_one_day_wide",
        "worker/core/features.py",
        "window = days[_bl(days, day - {n - 1}, 0, day_hi) : day_hi]",
        "window = days[_bl(days, day - {n}, 0, day_hi) : day_hi]",
    ),
    Mutation(
        "key_action_window_one_day_wide",
        "worker/core/features.py",
        "key_hi - _bl(keys, day - {n - 1}, 0, key_hi)",
        "key_hi - _bl(keys, day - {n}, 0, key_hi)",
    ),
    Mutation(
        "refunds_not_uncounted",
        "worker/core/state.py",
        "VOIDED: Final = CANCELLED | REFUNDED",
        "VOIDED: Final = CANCELLED",
    ),
    Mutation(
        "cancels_not_uncounted",
        "worker/core/state.py",
        "VOIDED: Final = CANCELLED | REFUNDED",
        "VOIDED: Final = REFUNDED",
    ),
    Mutation(
        "dedupe_off",  # every event adds its order again instead of merging into its record
        "worker/core/state.py",
        "            if not record.absorb(flag, event.occurred_ms, event.amount_minor, "
        "event.event_id):\n                return changed\n",
        "            record.absorb(flag, event.occurred_ms, event.amount_minor, event.event_id)\n"
        "            before = None\n",
    ),
    Mutation(
        "due_day_skips_tomorrow",
        "worker/core/engine.py",
        "bisect_right(deltas, day - anchor)",
        "bisect_right(deltas, day - anchor + 1)",
    ),
    Mutation(
        "lua_offsets_may_go_backwards",
        "worker/redis/segment_worker.lua",
        "if stored == false or given > (tonumber(stored) or -1) then",
        "if true then",
        STORE,
    ),
    Mutation(
        "lua_due_index_keeps_the_old_bucket",
        "worker/redis/segment_worker.lua",
        "    bucket_del(base, at, instant, names) -- before the adds, which may refill the bucket",
        "",
        DUE_INDEX,
    ),
    Mutation(
        "lua_due_read_hands_out_names_without_a_state",
        "worker/redis/segment_worker.lua",
        "        if redis.call('EXISTS', base .. 'c:' .. name) == 0 then",
        "        if false then",
        DUE_INDEX,
    ),
    Mutation(
        "lua_due_index_keeps_emptied_buckets_listed",
        "worker/redis/segment_worker.lua",
        "  if redis.call('EXISTS', bucket) == 0 then\n"
        "    redis.call('ZREM', at, instant)\n  end\nend",
        "end",
        DUE_INDEX,
    ),
    Mutation(
        "storage_forgets_where_it_read_customers_due",
        "worker/live/storage.py",
        "cid: start(s.due_day) for cid, s in states.items() if s and s.due_day is not None",
        "cid: start(s.due_day) for cid, s in states.items() if False",
        ("tests/integration/test_storage_due.py",),
    ),
    Mutation(
        "stored_orders_keep_their_first_step_when_the_base_moves",
        "worker/core/codec.py",
        "        if base != self.base:",
        "        if False:",
        ("tests/core/test_codec.py",),
    ),
    Mutation(
        "stored_orders_count_voided_orders",
        "worker/core/codec.py",
        "bool(f & counting) and not f & VOIDED",
        "bool(f & counting)",
        ("tests/core/test_codec.py",),
    ),
    Mutation(
        "since_instants_written_back_keep_their_base",
        "worker/core/codec.py",
        "if base != layout.base and since:",
        "if False:",
        ("tests/core/test_codec.py",),
    ),
    Mutation(
        "key_actions_written_back_though_changed",
        "worker/core/codec.py",
        "elif parts is not None and base == parts.base and keys == parts.keys:",
        "elif parts is not None and base == parts.base:",
        ("tests/core/test_codec.py",),
    ),
    Mutation(
        "stored_orders_ignore_partial_refunds",
        "worker/core/codec.py",
        "        if self.refunds:\n            selected = list(selected)",
        "        if False:\n            selected = list(selected)",
        ("tests/core/test_codec.py",),
    ),
    Mutation(
        "lua_epoch_fence_off",
        "worker/redis/segment_worker.lua",
        "  if plan.current ~= plan.epoch then\n",
        "  if false then\n",
        STORE,
        count=None,
    ),
)


def scratch_copy(target: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) copied to ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (target / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / os.fsdecode(name))


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """pytest -x over ``tests`` in ``tree``: its exit status and last line."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(command, check=False, cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


def apply(tree: Path, mutation: Mutation) -> str:
    """Edit the scratch file; returns its original text (to restore)."""
    path = tree / mutation.path
    text = path.read_text()
    found = text.count(mutation.old)
    if found == 0 or mutation.count not in (None, found):
        raise SystemExit(
            f"{mutation.name}: {mutation.old!r} occurs {found} times in {mutation.path}"
        )
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only these")
    parser.add_argument("--skip-baseline", action="store_true", help="trust the unmutated run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:32} {m.path}")
        return 0
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutations: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp)
        scratch_copy(tree)
        if not args.skip_baseline:
            for tests in sorted({m.tests for m in chosen}):
                code, last = run_tests(tree, tests)
                if code != 0:
                    print(f"baseline fails ({' '.join(tests)}): {last}", file=sys.stderr)
                    return 2
                print(f"baseline passes: {' '.join(tests)}: {last}", flush=True)
        missed = []
        for m in chosen:
            original = apply(tree, m)
            started = time.monotonic()
            try:
                code, last = run_tests(tree, m.tests)
            finally:
                (tree / m.path).write_text(original)
            verdict = {0: "MISSED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")
            if code != 1:
                missed.append(m.name)
            seconds = time.monotonic() - started
            print(f"{verdict:8} {m.name:32} {seconds:5.0f}s  {last}", flush=True)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught")
    if missed:
        print(f"not caught: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
