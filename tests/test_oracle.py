"""Replay agrees exactly with the independent oracle of tests/oracle.py.

The oracle recomputes replay's output from the specification; here both run over the same
lines and must produce the same change events (byte for byte), the same rejects and the same
final states. ``next_change_at`` is the one field the oracle does not predict: the core may
name an earlier wake-up day, but no class may change before it.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.boundaries import CASES, TODAY, Case
from tests.oracle import (
    DAY,
    DIMENSIONS,
    Oracle,
    Order,
    Reject,
    Visit,
    local_day,
    midnight,
    money,
    ms_of,
    read_line,
    run_oracle,
    text_of,
)
from tests.traffic import encode, history, order_doc, visit_doc
from worker.core.events import ParseLimits, Rejection
from worker.core.rules import Rules, default_rules_text, load_rules, parse_rules
from worker.core.views import describe
from worker.replay import Replayer

RULES = load_rules(None)


def rules_in(zone: str) -> Rules:
    """The default rules on the calendar of ``zone``."""
    text = default_rules_text().replace(b'timezone = "UTC"', f'timezone = "{zone}"'.encode())
    rules = parse_rules(text, zone)
    assert rules.calendar.name == zone
    return rules


REFERENCE_MS = ms_of("2100-01-01T00:00:00.000Z")  # "now" for the future-timestamp check
HORIZON_DAYS = 800  # next_change_at None: nothing may change within this many days


@dataclass
class Replayed:
    """What replay produced: change lines, rejects, and the replayer (states, clock)."""

    changes: list[bytes]
    rejects: list[tuple[int, str, str | None]]
    replayer: Replayer


def replay(lines: list[bytes], as_of_ms: int, rules: Rules = RULES) -> Replayed:
    """Drive Replayer as ``segment-worker replay --as-of`` does."""
    changes: list[bytes] = []
    rejects: list[tuple[int, str, str | None]] = []

    def on_reject(line_no: int, rejection: Rejection, raw: bytes) -> None:
        rejects.append((line_no, rejection.reason.value, rejection.field))

    replayer = Replayer(
        rules,
        lambda change: changes.append(change.to_json()),
        on_reject,
        limits=ParseLimits(),
        future_reference_ms=REFERENCE_MS,
    )
    for line_no, raw in enumerate(lines, start=1):
        replayer.feed(raw, line_no)
    replayer.advance(as_of_ms)
    return Replayed(changes, rejects, replayer)


def state_out(replayer: Replayer, rules: Rules = RULES) -> list[dict[str, object]]:
    """The --state-out records, sorted by customer id."""
    assert replayer.clock_ms is not None
    day = rules.calendar.day_of(replayer.clock_ms)
    return [describe(replayer.states[cid], rules, day) for cid in sorted(replayer.states)]


def assert_agree(
    lines: list[bytes], as_of_ms: int, rules: Rules = RULES
) -> tuple[Replayed, Oracle]:
    """Replay and the oracle agree on changes, rejects, clock and final states."""
    got = replay(lines, as_of_ms, rules)
    oracle = run_oracle(
        lines,
        as_of_ms,
        rules.version,
        REFERENCE_MS,
        rules.calendar.name,
        suppress=rules.consent.suppress,
    )
    assert got.rejects == oracle.rejects
    assert got.replayer.summary.withheld == oracle.withheld
    want = [orjson.dumps(change) for change in oracle.changes]
    for i, (line, expected) in enumerate(zip(got.changes, want, strict=False)):
        if line != expected:  # show the first difference as dicts, with some context
            context = [orjson.loads(c) for c in got.changes[max(0, i - 3) : i]]
            assert (orjson.loads(line), context) == (oracle.changes[i], context), f"change {i}"
    assert len(got.changes) == len(want)
    assert got.replayer.clock_ms == oracle.clock
    assert sorted(got.replayer.states) == sorted(oracle.customers)
    today = oracle.today()
    for record in state_out(got.replayer, rules):
        cid = str(record["customer_id"])
        next_change = record.pop("next_change_at")
        expected_record = oracle.state_out(cid)
        assert record == expected_record
        assert list(record) == list(expected_record)  # same field order in the JSON line
        if next_change is None:
            assert oracle.first_change_day(cid, today + HORIZON_DAYS) is None, cid
        else:
            due = ms_of(str(next_change))
            due_day = local_day(due, oracle.zone)
            assert due == midnight(due_day, oracle.zone) and due_day > today, (cid, next_change)
            assert oracle.first_change_day(cid, due_day) is None, (cid, next_change)
    return got, oracle


@functools.cache
def big_history() -> tuple[list[bytes], int]:
    """About 25,000 lines from 2,000 customers over two years (seeded)."""
    return history(20261123, customers=2000, events=20_000, days=730)


def test_replay_matches_the_oracle_on_a_two_year_history() -> None:
    lines, as_of = big_history()
    got, oracle = assert_agree(lines, as_of)

    # The history exercises what it is meant to.
    parsed = [read_line(line, REFERENCE_MS) for line in lines]
    events = [e for e in parsed if isinstance(e, Order | Visit)]
    assert len(events) >= 20_000
    assert len(oracle.customers) >= 1900
    assert len({e.event_id for e in events}) < len(events)  # re-sent lines
    late = sum(1 for a, b in itertools.pairwise(events) if b.ms < a.ms - DAY)
    assert late >= 100  # events delivered more than a day behind the clock
    statuses = {e.status for e in events if isinstance(e, Order)}
    assert statuses == {"placed", "paid", "cancelled", "refunded"}
    reasons = {reason for _, reason, _ in oracle.rejects}
    assert reasons >= {
        "invalid_json",
        "negative_amount",
        "unknown_status",
        "missing_field",
        "unsupported_currency",
        "invalid_timestamp",
        "future_timestamp",
    }
    assert 0.005 < len(oracle.rejects) / len(lines) < 0.02
    changes = [orjson.loads(line) for line in got.changes]
    assert {c["cause"]["type"] for c in changes} == {"order", "visit", "timer"}
    reached = {(c["dimension"], c["to"]) for c in changes}
    for cls in ("potential", "new", "active", "churn_risk", "churned", "returning"):
        assert ("lifecycle", cls) in reached
    for cls in ("high", "medium", "low"):
        assert ("value_tier", cls) in reached
    assert {to for dim, to in reached if dim == "rfm"} >= {
        "champions",
        "loyal",
        "new",
        "promising",
        "potential_loyalist",
        "at_risk",
        "hibernating",
        "cant_lose",
    }
    assert ("membership", "super_member") in reached and ("tenure", "long") in reached
    assert ("old_customer", None) in reached  # a refund or cancel took someone out
    timer_drops = {c["dimension"] for c in changes if c["cause"]["type"] == "timer"}
    assert {"lifecycle", "value_tier", "rfm", "tenure"} <= timer_drops


def test_replay_output_is_byte_identical_across_runs_and_processes(tmp_path: Path) -> None:
    lines, as_of = history(7, customers=500, events=5000, days=400)
    first, second = replay(lines, as_of), replay(lines, as_of)
    assert len(first.changes) > 5000
    assert b"\n".join(first.changes) == b"\n".join(second.changes)
    assert first.rejects == second.rejects
    assert orjson.dumps(state_out(first.replayer)) == orjson.dumps(state_out(second.replayer))
    # The command in fresh processes with different string-hash seeds (so different set and
    # dict layouts): the same bytes again. Its future limit is the wall clock plus ten years.
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"changes-{seed}.jsonl"
        command = [sys.executable, "-m", "worker", "replay", str(events), "--quiet"]
        command += ["--as-of", text_of(as_of), "--out", str(out), "--future-skew", "315360000"]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(command, check=True, env=env, cwd=Path(__file__).parent.parent)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == b"".join(line + b"\n" for line in first.changes)


# --- small random histories ---------------------------------------------------------------

BASE = ms_of("2026-01-01T00:00:00.000Z")
KINDS = ("visit", "placed", "paid", "paid", "cancelled", "refunded", "single", "bad")


@st.composite
def small_histories(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """1-3 customers with 1-25 events each over ~400 days, in any delivery order."""
    lines: list[bytes] = []
    latest = BASE
    customers = ("c2", "c10", "Zoë")[: draw(st.integers(1, 3))]
    for cid in customers:
        for j in range(draw(st.integers(1, 25))):
            kind = draw(st.sampled_from(KINDS))
            within = draw(st.one_of(st.just(0), st.just(DAY - 1), st.integers(0, DAY - 1)))
            ms = BASE + draw(st.integers(0, 400)) * DAY + within
            latest = max(latest, ms)
            region = draw(st.sampled_from((None, None, "EU", "NA")))
            eid = f"{cid}-{j}"
            if kind == "visit":
                action = draw(st.sampled_from(("page_view", "login", "search", "add_to_cart")))
                lines.append(encode(visit_doc(eid, cid, ms, action, region)))
                continue
            cents = draw(st.integers(0, 60_000))
            if kind in ("cancelled", "refunded") and draw(st.booleans()):
                cents = draw(st.sampled_from((0, 0, 100, 1_000)))  # the whole order, or a part
            amount: object = draw(
                st.sampled_from(
                    (f"{cents // 100}.{cents % 100:02d}", cents / 100, (cents * 10 + 5) / 1000)
                )
            )
            if kind == "bad":  # refused: no rate for EUR (the clock still moves), or negative
                doc = order_doc(eid, cid, ms, amount, "paid", currency="EUR", region=region)
                if draw(st.booleans()):
                    doc.update(currency="USD", amount=-1)
            elif kind == "single":  # no order_id: the event is its own order
                doc = order_doc(eid, cid, ms, amount, "paid", region=region)
            else:
                oid = f"{cid}-o{draw(st.integers(0, 3))}"
                doc = order_doc(eid, cid, ms, amount, kind, order_id=oid, region=region)
            lines.append(encode(doc))
    for index in draw(st.lists(st.integers(0, len(lines) - 1), max_size=3)):
        lines.append(lines[index])  # re-sent
    ordered = draw(st.permutations(lines))
    as_of = latest + draw(st.integers(0, 400)) * DAY + draw(st.integers(0, DAY - 1))
    return list(ordered), as_of


@settings(max_examples=150, deadline=None)
@given(small_histories())
def test_small_histories_in_any_order_match_the_oracle(case: tuple[list[bytes], int]) -> None:
    lines, as_of = case
    assert_agree(lines, as_of)


# --- every number of the default rules, on both sides --------------------------------------


def boundary_lines(case: Case) -> list[bytes]:
    """The case of tests/boundaries.py as replay input lines, re-sent ones at the end."""
    noon = ms_of(f"{TODAY}T12:00:00.000Z")
    lines = []
    for i, ev in enumerate(case.events):
        ms, event_id = noon - ev.days_ago * DAY, f"e{i}"
        if ev.kind == "visit":
            lines.append(encode(visit_doc(event_id, "c", ms, "login")))
        else:
            order_id = ev.order or f"o{i}"
            doc = order_doc(event_id, "c", ms, money(ev.cents), ev.kind, order_id=order_id)
            lines.append(encode(doc))
    return lines + [lines[i] for i in case.resend]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_boundaries_through_replay_match_the_oracle(case: Case) -> None:
    _, oracle = assert_agree(boundary_lines(case), ms_of(f"{TODAY}T12:00:00.000Z"))
    out, classes = oracle.state_out("c"), oracle.classes_of("c")
    assert {key: classes[key] if key in classes else out[key] for key in case.expect} == case.expect


ZONED = {zone: rules_in(zone) for zone in ("America/New_York", "Asia/Shanghai", "Europe/Berlin")}


@settings(max_examples=90, deadline=None)
@given(small_histories(), st.sampled_from(sorted(ZONED)))
def test_small_histories_on_a_shop_calendar_match_the_oracle(
    case: tuple[list[bytes], int], zone: str
) -> None:
    """Over 400 days from 2026-01-01, so across two clock changes in New York and Berlin."""
    lines, as_of = case
    assert_agree(lines, as_of, ZONED[zone])


def test_replay_matches_the_oracle_on_a_year_in_berlin() -> None:
    lines, as_of = history(1505, customers=400, events=4000, days=400)
    got, oracle = assert_agree(lines, as_of, ZONED["Europe/Berlin"])
    timers = [orjson.loads(c) for c in got.changes if b'"timer"' in c]
    # Timers fire at Berlin midnight: 23:00 UTC in winter, 22:00 UTC in summer.
    assert {t["occurred_at"][11:] for t in timers} == {"23:00:00.000Z", "22:00:00.000Z"}
    assert len(oracle.customers) >= 350


# --- the oracle itself, against hand-worked cases ------------------------------------------


def oracle_of(docs: list[dict[str, object]], as_of: str) -> Oracle:
    """The oracle over ``docs`` (one line each), advanced to ``as_of``."""
    return run_oracle([encode(d) for d in docs], ms_of(as_of), "v", REFERENCE_MS)


def paid(eid: str, at: str, amount: object = "20.00", **extra: str) -> dict[str, object]:
    """A paid order of customer 'c' (its own order unless ``order_id`` is given)."""
    return order_doc(eid, "c", ms_of(at), amount, "paid", **extra)


def test_oracle_one_order_200_days_ago_and_no_visit_is_churned() -> None:
    oracle = oracle_of([paid("o1", "2026-01-01T10:00:00.000Z")], "2026-07-20T12:00:00.000Z")
    out = oracle.state_out("c")
    assert (
        out["classes"]
        == oracle.classes_of("c")
        == {
            "lifecycle": "churned",
            "value_tier": "low",
            "rfm": "hibernating",
            "membership": "ordinary",
            "tenure": "mid",
            "old_customer": None,
        }
    )
    assert (out["r_score"], out["f_score"], out["m_score"]) == (1, 1, 1)
    assert text_of(oracle.customers["c"].since["lifecycle"]) == "2026-07-01T00:00:00.000Z"
    # A visit within the last 180 days keeps the same customer at churn risk.
    visit = visit_doc("v1", "c", ms_of("2026-03-01T08:00:00.000Z"), "login")
    oracle = oracle_of([paid("o1", "2026-01-01T10:00:00.000Z"), visit], "2026-07-20T12:00:00.000Z")
    assert oracle.classes_of("c")["lifecycle"] == "churn_risk"


def test_oracle_an_order_today_scores_r5_and_is_new() -> None:
    oracle = oracle_of([paid("o1", "2026-03-05T08:00:00.000Z", 60)], "2026-03-05T23:00:00.000Z")
    out = oracle.state_out("c")
    assert (out["r_score"], out["f_score"], out["m_score"]) == (5, 1, 2)
    assert oracle.classes_of("c")["lifecycle"] == oracle.classes_of("c")["rfm"] == "new"
    assert [(c["dimension"], c["to"], c["cause"]) for c in oracle.changes] == [
        (dim, to, {"type": "order", "event_id": "o1"})
        for dim, to in (
            ("lifecycle", "new"),
            ("value_tier", "low"),
            ("rfm", "new"),
            ("membership", "ordinary"),
            ("tenure", "short"),
        )
    ]


def test_oracle_time_alone_walks_one_order_through_the_lifecycle() -> None:
    """Alice of tests/golden/README.md (hand-checked there): one order on 2026-01-03."""
    placed = order_doc(
        "o1", "alice", ms_of("2026-01-03T10:00:00Z"), "35.50", "placed", order_id="A1"
    )
    paid_ = order_doc("o2", "alice", ms_of("2026-01-03T10:05:00Z"), "35.50", "paid", order_id="A1")
    oracle = oracle_of([placed, paid_, paid_], "2026-09-01T00:00:00Z")
    timers = [
        (c["emitted_at"], c["dimension"], c["from"], c["to"])
        for c in oracle.changes
        if c["cause"] == {"type": "timer", "event_id": None}
    ]
    assert timers == [
        ("2026-01-18T00:00:00.000Z", "rfm", "new", "promising"),  # 15 days: R 4
        ("2026-02-03T00:00:00.000Z", "lifecycle", "new", "active"),  # 31 days
        ("2026-02-03T00:00:00.000Z", "rfm", "promising", "about_to_sleep"),  # R 3
        ("2026-03-05T00:00:00.000Z", "lifecycle", "active", "churn_risk"),  # 61 days
        ("2026-03-05T00:00:00.000Z", "rfm", "about_to_sleep", "hibernating"),  # R 2
        ("2026-04-04T00:00:00.000Z", "tenure", "short", "mid"),  # 91 days
        ("2026-07-03T00:00:00.000Z", "lifecycle", "churn_risk", "churned"),  # 181 days
    ]
    assert all(c["occurred_at"] == c["emitted_at"] for c in oracle.changes[5:])
    assert len(oracle.changes) == 5 + len(timers)  # the re-sent payment changed nothing


def test_oracle_order_counting_and_money() -> None:
    # The cancel arrives first; the payment after it never counts.
    cancel = order_doc("x", "c", ms_of("2026-01-21T08:00:00Z"), "500", "cancelled", order_id="D1")
    oracle = oracle_of(
        [cancel, paid("p", "2026-01-21T07:59:00Z", "500", order_id="D1")],
        "2026-02-01T00:00:00Z",
    )
    assert oracle.changes == []
    assert oracle.state_out("c")["orders_total"] == 0
    assert set(oracle.classes_of("c").values()) == {None}
    # Amounts: exact minor units, numbers rounded half to even at the cent.
    for amount, cents in (("10.5", 1050), (10.005, 1000), (10.015, 1002), (7, 700), ("0", 0)):
        event = read_line(encode(paid("p", "2026-01-01T00:00:00Z", amount)), REFERENCE_MS)
        assert isinstance(event, Order) and event.cents == cents
    # Placed then paid for less: the paid event's amount and time count, once.
    oracle = oracle_of(
        [
            order_doc("a", "c", ms_of("2026-01-01T10:00:00Z"), "30.00", "placed", order_id="O"),
            paid("b", "2026-01-01T11:00:00Z", "25.00", order_id="O"),
            paid("c2", "2026-01-02T09:00:00Z", "20.00"),
        ],
        "2026-01-03T00:00:00Z",
    )
    out = oracle.state_out("c")
    assert (out["orders_total"], out["monetary_total"]) == (2, "45.00")
    assert out["first_order_at"] == "2026-01-01T11:00:00.000Z"
    assert oracle.classes_of("c")["old_customer"] == "in"


def test_oracle_old_orders_leave_the_90_day_window_at_midnight() -> None:
    docs = [paid(f"o{d}", f"2026-01-0{d}T12:00:00Z", "60.00") for d in (1, 2, 3, 4)]
    oracle = oracle_of(docs, "2026-06-01T00:00:00Z")
    tiers = [(c["emitted_at"], c["to"]) for c in oracle.changes if c["dimension"] == "value_tier"]
    # 4 orders, 240 spent: high; 2026-01-01 leaves the window on day 90 after it (2026-04-01).
    assert tiers == [
        ("2026-01-01T12:00:00.000Z", "low"),
        ("2026-01-02T12:00:00.000Z", "medium"),
        ("2026-01-04T12:00:00.000Z", "high"),
        ("2026-04-01T00:00:00.000Z", "medium"),
        ("2026-04-03T00:00:00.000Z", "low"),
    ]


def test_a_refused_currency_still_moves_the_clock() -> None:
    """EUR has no rate in the default rules: the line is refused, but it passed the event
    contract and the clock follows every such line, so an order arriving after it is late."""
    t = ms_of("2026-05-01T10:00:00Z")
    lines = [
        encode(order_doc("o1", "c", t, "20.00", "paid")),
        encode(order_doc("e1", "c", t + 20 * DAY, "9.99", "paid", currency="EUR")),
        encode(order_doc("o2", "c", t + DAY, "30.00", "paid")),
    ]
    got, oracle = assert_agree(lines, t + 20 * DAY)
    assert oracle.rejects == [(2, "unsupported_currency", "currency")]
    assert [(c["emitted_at"], c["dimension"], c["to"]) for c in oracle.changes[5:]] == [
        ("2026-05-16T00:00:00.000Z", "rfm", "promising"),  # fired on the way to the EUR line
        ("2026-05-21T10:00:00.000Z", "lifecycle", "active"),  # o2, classified at the clock
        ("2026-05-21T10:00:00.000Z", "rfm", "potential_loyalist"),
        ("2026-05-21T10:00:00.000Z", "old_customer", "in"),
    ]
    assert oracle.changes[-1]["occurred_at"] == text_of(t + DAY)
    assert got.replayer.clock_ms == oracle.clock == t + 20 * DAY


def test_the_oracle_dimensions_are_the_rules_dimensions() -> None:
    assert RULES.dimension_names == DIMENSIONS


def test_the_shanghai_golden_story_matches_the_oracle() -> None:
    """tests/golden/shanghai: the Beijing shop's story, hand-checked there, agrees here."""
    path = Path(__file__).parent / "golden" / "shanghai" / "scenario.jsonl"
    lines = path.read_bytes().splitlines()
    _, oracle = assert_agree(lines, ms_of("2027-01-01T00:00:00+08:00"), ZONED["Asia/Shanghai"])
    tiers = [(c["occurred_at"], c["to"]) for c in oracle.changes if c["customer_id"] == "bj"]
    assert ("2026-03-31T04:00:00.000Z", "high") in tiers  # the four orders in 90 Beijing dates
    lin = [(c["occurred_at"], c["to"]) for c in oracle.changes if c["customer_id"] == "lin"]
    assert ("2026-12-01T16:00:00.000Z", "churn_risk") in lin
    assert [to for _, to in lin].count("churn_risk") == 1  # not before December
    assert oracle.classes_of("wu")["lifecycle"] == "churned"
    assert oracle.state_out("pat")["monetary_total"] == "95.00"


# --- consent: changes withheld on chosen dimensions ----------------------------------------

CONSENT_RULES = parse_rules(
    default_rules_text() + b'[consent]\nsuppress = ["value_tier", "rfm"]\n', "consent"
)


def profile_doc(
    event_id: str, customer_id: str, ms: int, consent: bool | None, gender: str | None
) -> dict[str, object]:
    """A profile.v1 document: marketing consent as a flag or as the trait itself."""
    doc: dict[str, object] = {
        "type": "profile",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": text_of(ms),
        "traits": {"gender": gender},
    }
    if consent is not None:
        if len(event_id) % 2:
            doc["consent"] = {"marketing": consent}
        else:
            doc["traits"] = {"gender": gender, "marketing_consent": consent}
    return doc


@st.composite
def histories_with_consent(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """A small history plus 1-6 profiles per customer that withdraw and give back consent."""
    lines, as_of = draw(small_histories())
    customers = ("c2", "c10", "Zoë")
    for cid in customers[: draw(st.integers(1, 3))]:
        for j in range(draw(st.integers(1, 6))):
            ms = BASE + draw(st.integers(0, 400)) * DAY + draw(st.integers(0, DAY - 1))
            consent = draw(st.sampled_from((False, False, True, None)))
            gender = draw(st.sampled_from((None, "F", "M")))
            lines.append(encode(profile_doc(f"{cid}-p{j}", cid, ms, consent, gender)))
    return list(draw(st.permutations(lines))), as_of


@settings(max_examples=150, deadline=None)
@given(histories_with_consent())
def test_withheld_changes_in_any_order_match_the_oracle(case: tuple[list[bytes], int]) -> None:
    lines, as_of = case
    assert_agree(lines, as_of, CONSENT_RULES)


def test_consent_withdrawn_and_given_back_over_a_year_matches_the_oracle() -> None:
    lines, as_of = history(1509, customers=300, events=3000, days=365)
    start = ms_of("2025-01-01T00:00:00.000Z")
    events = [
        e for e in (read_line(line, REFERENCE_MS) for line in lines) if not isinstance(e, Reject)
    ]
    customers = sorted({e.customer_id for e in events})
    rng = random.Random(1509)
    merged = list(lines)
    for n, cid in enumerate(customers[::2]):  # half withdraw consent, a third of them give it back
        withdrawn = start + rng.randrange(120) * DAY
        statements = [profile_doc(f"w{n}", cid, withdrawn, False, "F")]
        if n % 3 == 0:
            back = withdrawn + rng.randrange(60, 200) * DAY
            statements.append(profile_doc(f"b{n}", cid, back, True, None))
        for doc in statements:  # delivered anywhere, early or late
            merged.insert(rng.randrange(len(merged) + 1), encode(doc))
    got, oracle = assert_agree(merged, as_of, CONSENT_RULES)
    assert oracle.withheld["value_tier"] > 10 and oracle.withheld["rfm"] > 10
    changes = [orjson.loads(line) for line in got.changes]
    given_back = {c["dimension"] for c in changes if c["cause"]["type"] == "profile"}
    assert given_back >= {"value_tier", "rfm"}
    assert any(state.withheld for state in got.replayer.states.values())
