"""A rules file's text to the document the rules are read from: TOML, or YAML for a file
named ``*.yaml``/``*.yml``.

Both give the same document for the same rules, so a file keeps its version when converted.
YAML is held to what TOML can say: string keys, no duplicate keys, no aliases (an alias can
expand a small file into a huge document), one document; an unquoted value that YAML 1.1
reads as other than it looks (``no`` a boolean, ``014`` octal, ``1:20`` base 60, a date) is
refused with the fix, not silently taken; and a number that YAML 1.1 takes for a string
(``9e-1``, ``1e3``) is read as YAML 1.2 and TOML read it, a float.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Final, Protocol

import yaml

YAML_SUFFIXES: Final = (".yaml", ".yml")
_STR: Final = "tag:yaml.org,2002:str"
_BOOL: Final = "tag:yaml.org,2002:bool"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_TIMESTAMP: Final = "tag:yaml.org,2002:timestamp"
_OCTAL: Final = re.compile(r"[-+]?0[0-7_]+")
# The floats of YAML 1.2's core schema that are not its integers (a dot or an exponent);
# unlike YAML 1.1, the exponent needs no sign nor the dot a digit before it. Whole: the
# resolver matches at the start only.
_FLOAT_1_2: Final = re.compile(
    r"[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)\Z"
)


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
    except yaml.MarkedYAMLError as exc:
        raise SyntaxProblem(_yaml_error(exc)) from None
    except yaml.YAMLError as exc:
        raise SyntaxProblem(f"not valid YAML: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise SyntaxProblem("arrays or tables nested too deeply") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1), which also reads YAML 1.2's floats as floats: else
    ``9e-1`` is a string, a threshold that is no number and a version unlike the TOML twin's."""


# Tried after YAML 1.1's own resolvers, so its integers (``12``) stay integers.
_Loader.add_implicit_resolver(_FLOAT, _FLOAT_1_2, list("-+.0123456789"))


def _read_yaml(text: str) -> dict[str, Any]:
    """One pass of the safe loader, checked between its node tree and the document."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()  # one document, or an error
        if root is None:
            return {}
        if not isinstance(root, yaml.MappingNode):
            raise SyntaxProblem("the top level must be a mapping of tables")
        _check_nodes(root, set())
        doc: dict[str, Any] = loader.construct_document(root)
        return doc
    finally:
        loader.dispose()


def _check_nodes(node: yaml.Node, met: set[int]) -> None:
    """String keys only, each once per mapping: as in TOML, where a repeated key is an
    error rather than the last one silently winning. No alias: the node tree shares the
    anchored node where one stands (``met``), and building the document would copy it out,
    so a small file could become a huge document. And no unquoted value that YAML 1.1
    (PyYAML's) reads as something other than it looks (:func:`_surprise`)."""
    if id(node) in met:
        at = node.start_mark
        raise SyntaxProblem(
            "aliases (*name) are not allowed (one repeats the value anchored at line "
            f"{at.line + 1}, column {at.column + 1})"
        )
    met.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag != _STR:
                raise SyntaxProblem(f"keys must be strings{_where(key.start_mark)}")
            if key.value in seen:
                raise SyntaxProblem(f"duplicate key {key.value!r}{_where(key.start_mark)}")
            seen.add(key.value)
            _check_nodes(value, met)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_nodes(item, met)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        surprise = _surprise(node.tag, node.value)
        if surprise:
            raise SyntaxProblem(f"{surprise}{_where(node.start_mark)}")


def _surprise(tag: str, text: str) -> str | None:
    """Why an unquoted ``text`` that YAML 1.1 read as ``tag`` is not what its writer meant
    (None: it is): ``no``/``on`` as booleans, ``014`` as octal, ``1:20`` as base 60, a date."""
    quote = f'quote it ("{text}")'
    if tag == _BOOL and text.lower() not in ("true", "false"):
        return f"YAML reads {text} as a boolean; {quote} or write true or false"
    if tag in (_INT, _FLOAT) and ":" in text:
        return f"YAML reads {text} as a base-60 number; {quote} or write the number"
    if tag == _INT and _OCTAL.fullmatch(text):
        return f"YAML reads {text} as an octal number; write it without the leading 0"
    if tag == _TIMESTAMP:
        return f"YAML reads {text} as a date; {quote}"
    return None


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's multi-line message as one line, with a hint for the commonest mistake."""
    what = exc.problem or exc.context or "unreadable"
    if exc.problem and exc.context:
        what = f"{exc.problem} ({exc.context})"
    if "mapping values are not allowed" in what:
        what += "; a value containing ': ' or ' #' needs quotes"
    return f"not valid YAML: {what}{_where(exc.problem_mark or exc.context_mark)}"


class _Mark(Protocol):
    line: int
    column: int


def _where(mark: _Mark | None) -> str:
    return "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
