"""A rules file's text to the document the rules are read from: TOML, or YAML for a file
named ``*.yaml``/``*.yml``.

Both give the same document for the same rules, so a file keeps its version when converted.
YAML is held to what TOML can say: string keys, no duplicate keys, no aliases (an alias can
expand a small file into a huge document), one document.
"""

from __future__ import annotations

import tomllib
from typing import Any, Final, Protocol

import yaml

YAML_SUFFIXES: Final = (".yaml", ".yml")


class SyntaxProblem(ValueError):
    """The text is not a rules document; the message says where."""


def is_yaml(source: str) -> bool:
    return source.lower().endswith(YAML_SUFFIXES)


def read_document(text: str, source: str) -> dict[str, Any]:
    """The top-level table of ``text``, read as the name ``source`` says."""
    try:
        return _read_yaml(text) if is_yaml(source) else tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
        raise SyntaxProblem(str(exc)) from None
    except yaml.YAMLError as exc:
        raise SyntaxProblem(f"not valid YAML: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise SyntaxProblem("arrays or tables nested too deeply") from None


def _read_yaml(text: str) -> dict[str, Any]:
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise SyntaxProblem(f"aliases (*name) are not allowed{_where(event.start_mark)}")
    root = yaml.compose(text, Loader=yaml.SafeLoader)  # one document, or an error
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise SyntaxProblem("the top level must be a mapping of tables")
    _check_keys(root)
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _check_keys(node: yaml.Node) -> None:
    """String keys only, each once per mapping: as in TOML, where a repeated key is an
    error rather than the last one silently winning."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag != "tag:yaml.org,2002:str":
                raise SyntaxProblem(f"keys must be strings{_where(key.start_mark)}")
            if key.value in seen:
                raise SyntaxProblem(f"duplicate key {key.value!r}{_where(key.start_mark)}")
            seen.add(key.value)
            _check_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_keys(item)


class _Mark(Protocol):
    line: int
    column: int


def _where(mark: _Mark | None) -> str:
    return "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
