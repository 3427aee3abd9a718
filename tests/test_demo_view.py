"""The demo's screen in the words a marketer reads: class labels, the current event rate,
and dimensions that apply only to some customers."""

import pytest

from worker.cli import main
from worker.core.rules import default_rules_text, parse_rules
from worker.display import width
from worker.tools.demo import View

RULES = parse_rules(
    default_rules_text().replace(
        b'{ name = "high", when', b'{ name = "high", label = "High value", when'
    ),
    "labelled.toml",
)


def change(
    customer: str, dimension: str, before: str | None, after: str | None
) -> dict[str, object]:
    return {
        "customer_id": customer,
        "dimension": dimension,
        "from": before,
        "to": after,
        "occurred_at": "2026-01-02T00:00:00.000Z",
        "cause": {"type": "order", "event_id": "e"},
    }


def rows(view: View) -> dict[str, str]:
    text = view.render(0, 0, 0, "http://127.0.0.1:8080")
    return {line.split()[0]: line for line in text.splitlines() if line and line[0] != " "}


def test_classes_show_their_labels_and_customers_outside_a_dimension_are_na() -> None:
    view = View(RULES, "t0k")
    for customer in ("a", "b", "c"):
        view.absorb(change(customer, "lifecycle", None, "potential"))
    view.absorb(change("a", "lifecycle", "potential", "new"))
    view.absorb(change("a", "value_tier", None, "high"))
    shown = rows(view)
    assert shown["value_tier"].split()[1:] == ["n/a", "2", "High", "value", "1"]
    assert shown["lifecycle"].split()[1:] == ["potential", "2", "new", "1"]  # all apply
    text = view.render(0, 0, 0, "http://127.0.0.1:8080")
    assert "n/a: customers a dimension does not apply to" in text
    assert "orders_total >= 1: value_tier" in text  # the condition it applies under
    assert "has_visit: lifecycle" not in text  # it applies to every customer seen
    assert "High value" in view.feed[-1]


def test_a_narrow_terminal_cuts_classes_not_the_na_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    view = View(RULES, "t0k")
    for customer in ("a", "b"):
        view.absorb(change(customer, "lifecycle", None, "potential"))
    view.absorb(change("a", "rfm", None, "potential_loyalist"))
    assert rows(view)["rfm"].split()[1:3] == ["n/a", "1"]


def test_a_segment_reads_as_in_and_not_in() -> None:
    view = View(RULES, "t0k")
    view.absorb(change("a", "lifecycle", None, "new"))
    view.absorb(change("b", "lifecycle", None, "new"))
    view.absorb(change("a", "old_customer", None, "in"))
    assert rows(view)["old_customer"].split()[1:] == ["1", "in", "the", "segment,", "1", "not"]
    assert view.feed[-1].split()[-4:] == ["-", "->", "in", "(order)"]


def test_the_rate_is_the_current_one_not_the_average_since_start() -> None:
    view = View(RULES, "t0k")
    view.sample(0.0)
    view.produced = 10_000  # a burst at the start
    view.sample(1.0)
    for second in range(2, 21):  # then 100 events a second
        view.produced += 100
        view.sample(float(second))
    assert view.rate() == 100.0


WIDE = parse_rules(
    default_rules_text()
    .replace(
        b'{ name = "potential", when', '{ name = "potential", label = "見込み客", when'.encode()
    )
    .replace(
        b'{ name = "new", when = "orders_total == 1',
        '{ name = "new", label = "Nouve\u0301au", when = "orders_total == 1'.encode(),
    ),
    "wide.toml",
)


def test_the_feed_lines_up_wide_and_combining_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    view = View(WIDE, "t0k")
    changes = [
        change("cus_a", "lifecycle", None, "potential"),
        change("顧客_一二三", "lifecycle", "potential", "new"),  # labels 見込み客, Nouve\u0301au
        change("cafe\u0301", "value_tier", None, "high"),
        change("ＡＢＣ", "lifecycle", "new", "potential"),
    ]
    for each in changes:
        view.absorb(each)
    lines = view.render(0, 0, 0, "http://h").splitlines()[-len(changes) :]
    assert lines == list(view.feed)
    starts = {
        (
            width(line[: line.index(str(each["customer_id"]))]),
            width(line[: line.index(str(each["dimension"]))]),
            width(line[: line.index(" -> ")]),  # where the right-aligned from ends
            width(line[: line.index(" -> ") + 4]),
            width(line[: line.rindex(" (")]),
        )
        for each, line in zip(changes, lines, strict=True)
    }
    assert len(starts) == 1, lines


def test_a_narrow_terminal_cuts_lines_at_its_columns_not_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    view = View(WIDE, "t0k")
    view.absorb(change("顧客" * 20, "lifecycle", None, "potential"))
    view.absorb(change("a", "lifecycle", None, "potential"))
    lines = view.render(0, 0, 0, "http://h").splitlines()[3:]  # below the status lines
    assert max(width(line) for line in lines) == 40, lines
    assert lines[-2].startswith("2026-01-02  顧客顧客")


def test_the_lookup_hint_names_only_a_customer_it_has_seen() -> None:
    view = View(RULES, "t0k")
    assert "customers/ID" in view.lookup("http://h")
    view.absorb(change("cus_0000042", "lifecycle", None, "new"))
    assert view.lookup("http://h") == (
        "curl -H 'Authorization: Bearer t0k' http://h/customers/cus_0000042"
    )


@pytest.mark.parametrize("value", ["0", "65536"])
def test_a_port_the_web_server_cannot_take_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--http-port", value])
    assert exited.value.code == 2
    assert f"--http-port: must be a port 1..65535, got {value}" in capsys.readouterr().err
