"""Tables line up by the columns a terminal shows, not by characters: a wide (CJK) character
takes two, a combining mark none."""

import orjson
import pytest
from aiokafka import ConsumerRecord

from worker.cli.changes import render, row
from worker.display import clip, pad, width


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("abc", 3),
        ("顧客", 4),  # wide
        ("ＡＢ", 4),  # full-width
        ("e\u0301", 1),  # e + combining acute
        ("\u200d", 0),  # zero-width joiner
        ("", 0),
    ],
)
def test_width_counts_terminal_columns(text: str, columns: int) -> None:
    assert width(text) == columns


def test_pad_fills_to_the_columns_and_leaves_longer_text_whole() -> None:
    assert pad("顧客", 6) == "顧客  "
    assert pad("e\u0301", 3, right=True) == "  e\u0301"
    assert pad("顧客顧客", 3) == "顧客顧客"


@pytest.mark.parametrize(
    ("text", "columns", "clipped"),
    [
        ("abcdef", 4, "abcd"),
        ("顧客顧客", 5, "顧客"),  # the third would straddle the edge
        ("顧客顧客", 6, "顧客顧"),
        ("cafe\u0301s", 4, "cafe\u0301"),  # the mark stays with its e
        ("abc", 10, "abc"),
        ("顧", 0, ""),
    ],
)
def test_clip_keeps_the_start_that_fits_the_columns(text: str, columns: int, clipped: str) -> None:
    assert clip(text, columns) == clipped


def record(customer: str, dimension: str, to: str) -> ConsumerRecord[bytes, bytes]:
    change = {
        "customer_id": customer,
        "dimension": dimension,
        "from": None,
        "to": to,
        "occurred_at": "2026-01-02T00:00:00.000Z",
        "cause": {"type": "order"},
    }
    value = orjson.dumps(change)
    return ConsumerRecord("c", 0, 0, 0, 0, customer.encode(), value, None, 0, len(value), [])


def test_the_changes_table_lines_up_wide_and_combining_characters() -> None:
    lines = [
        row("occurred_at", "customer", "dimension", "from", "to", "cause"),
        render(record("cus_a", "value_tier", "high"), table=True),
        render(record("顧客_一二三", "価値", "高い"), table=True),
        render(record("cafe\u0301", "tier", "ne\u0301e"), table=True),
    ]
    arrows = {width(line[: line.index("->")]) for line in lines}
    causes = {width(line[: line.rindex(" ")]) for line in lines}
    assert len(arrows) == 1 and len(causes) == 1, lines
