"""The Redis key layout: worker/keys.py is the spec, the Functions library's header mirrors it,
and the library's code writes no key or meta field the spec does not list. No servers."""

from __future__ import annotations

import fnmatch
import re

import pytest
from redis.crc import key_slot

from worker import keys
from worker.keys import Layout
from worker.redis.library import library_code


def _header() -> str:
    code = library_code()
    return code[code.index("--[[") : code.index("]]")]


def _section(title: str) -> list[str]:
    """The indented lines under ``title`` in the header, up to the next blank line."""
    lines = _header().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    while not lines[start].startswith("  "):  # the title's sentence may run on
        start += 1
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line)
    return out


def _body() -> str:
    code = library_code()
    return code[code.index("]]") :]


def test_lua_header_lists_the_keys_of_the_spec_with_their_types() -> None:
    rows = [re.match(r"\s+<base>(\S+)\s+(\w+)\s", line) for line in _section("Key layout")]
    assert all(rows), _section("Key layout")
    assert {m[1]: m[2] for m in rows if m} == keys.KEY_TYPES


def test_lua_header_lists_the_meta_fields_of_the_spec() -> None:
    fields = tuple(line.split()[0] for line in _section("Fields of the meta hash"))
    assert fields == keys.META_FIELDS


def test_the_module_docstring_documents_every_key_and_field() -> None:
    doc = keys.__doc__ or ""
    for key in keys.KEY_TYPES:
        assert f"``<base>{key}`` ({keys.KEY_TYPES[key]})" in doc
    for field in keys.META_FIELDS:
        assert f"- ``{field}``:" in doc


def _fixed(spelled: str) -> str:
    """The literal part of a key or field as the spec spells it (``off:<topic>`` -> ``off:``)."""
    return spelled.split("<", 1)[0]


def test_the_lua_code_writes_only_fields_of_the_spec() -> None:
    body = _body()
    fixed = {_fixed(f) for f in keys.META_FIELDS}
    whole = set(re.findall(r"redis\.call\('H[A-Z]+', keys\[1\], '([^']*)'", body))
    prefixed = set(re.findall(r"redis\.call\('H[A-Z]+', keys\[1\], '([^']*)' \.\.", body))
    prefixed |= set(re.findall(r"\{ '(\w+:)' \.\. args", body))  # commit's offset plan
    assert whole, "no meta field found: has the code's shape changed?"
    assert whole <= fixed
    assert prefixed <= fixed
    # And each field the spec lists is one the code uses.
    for field in fixed:
        assert f"'{field}'" in body, field


def test_the_lua_code_checks_keys_against_the_spec() -> None:
    body = _body()
    checked = set(re.findall(r"base \.\. '([^']*)'", body))
    checked |= set(re.findall(r"\{p%d\+\}:\)(\w+)\$", body))  # base_of's meta pattern
    assert {_fixed(k) for k in checked} == {_fixed(k) for k in keys.KEY_TYPES}


def test_layout_spells_each_key_of_the_spec() -> None:
    layout = Layout("sw")
    spelled = {
        keys.META: layout.meta(3),
        keys.AT: layout.at(3),
        f"{keys.BUCKET}<instant>": layout.bucket(3, "<instant>"),
        keys.DUE: layout.due(3),
        keys.OUTBOX: layout.outbox(3),
        f"{keys.CUSTOMER}<name>": layout.customer(3, "<name>"),
        f"{keys.ERASED}<digest>": layout.erased(3, "<digest>"),
    }
    assert spelled == {k: "sw:{p3}:" + k for k in keys.KEY_TYPES}
    assert {key_slot(k.encode()) for k in spelled.values()} == {key_slot(b"p3")}


def test_layout_refuses_what_would_break_the_hash_tag() -> None:
    with pytest.raises(ValueError, match="hash tag"):
        Layout("a{b")
    with pytest.raises(ValueError, match="partition"):
        Layout().meta(-1)


def test_names_and_fields_read_back() -> None:
    layout = Layout("s*w")
    assert keys.name_in(layout.customer(12, "a}:c:b")) == "a}:c:b"
    with pytest.raises(ValueError, match="state key"):
        keys.name_in(layout.due(12))
    assert layout.every_customer() == "s\\*w:{p*}:c:*"
    assert keys.offset_topic(keys.offset_field("orders").encode()) == "orders"
    assert keys.offset_topic(b"relayed") is None
    field = keys.POPULATION + keys.population_name("lifecycle", "new")
    assert keys.population_of(field.encode()) == ("lifecycle", "new")
    assert keys.population_of(b"off:orders") is None
    with pytest.raises(ValueError, match="separator"):
        keys.population_name("a\x1fb", "c")


def test_the_keys_of_the_prefix_are_documented_spelled_and_outside_every_partition() -> None:
    doc = keys.__doc__ or ""
    for key, kind in keys.PREFIX_KEY_TYPES.items():
        assert f"``<prefix>:{key}`` ({kind})" in doc
    layout = Layout("s*w")
    record = layout.partitions()
    assert record == "s*w:partitions"
    assert "{" not in record  # no hash tag: a key of its own slot, not of a partition's
    # No SCAN over a partition's keys picks it up, nor does partition_in read one from it.
    patterns = {
        layout.every_customer(): layout.customer(3, "a"),
        layout.every_meta(): layout.meta(3),
        layout.markers(): layout.erased(3, "0" * 64),
    }
    for pattern, matched in patterns.items():
        glob = pattern.replace("\\*", "[*]")  # Redis's escape as fnmatch spells it
        assert fnmatch.fnmatchcase(matched, glob) and not fnmatch.fnmatchcase(record, glob)
    with pytest.raises(ValueError, match="not a key of a partition"):
        keys.partition_in(record)
