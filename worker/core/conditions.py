"""The condition language of the rules file.

A condition is a Python-syntax boolean expression over customer features, e.g.
``orders_90d >= 4 and spend_90d > 200`` or ``region in ("North China", "North-East")``.
It is parsed with :mod:`ast`, checked against a whitelist (names must be known features; no
calls, attributes, subscripts, lambdas or comprehensions), and translated to Python source
that only calls the null-safe helpers below. Nothing a rules author writes is ever executed
as given, so a rules file cannot run code.

A customer's own traits (profile.v1) are read as ``trait.<name>`` (``trait.gender == 'F'``,
``trait.birth_year <= 1990``); a trait the customer does not have is missing. Their types
are the customer's, so an ordering between text and a number is false, never an error.

Ordering comparisons (``<``, ``<=``, ``>``, ``>=``) with a missing value (``None``: e.g. days
since last order for a customer who never ordered) are false, ``==``/``!=`` are plain
equality (so ``region == None`` tests for a missing region), and arithmetic on a missing
value is missing.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from worker.errors import SegmentWorkerError

TRAIT: Final = "trait"  # trait.<name>: the customer's own traits


class FeatureKind(Enum):
    """How a feature moves when time passes with no event; decides where classes can change."""

    INVARIANT = "invariant"  # changes only with a new event
    DAYS_SINCE = "days_since"  # grows by one per day of the shop calendar
    WINDOW = "window"  # changes when an order or key action leaves a rolling window
    SCORE = "score"  # a step function of another feature
    MODEL = "model"  # a fitted model's prediction: falls (weakly) as days pass with no order


# Where a comparison of a days-since feature d (a whole number, one more each day) with a
# limit L can flip: the first day d exceeds L (<=, >), the first day it reaches L (<, >=), or
# both (==, !=, in, not in; L a list there). Recorded with each threshold, so that the
# due-day search looks only at days on which a class can change.
ABOVE: Final = "above"
REACHES: Final = "reaches"
EQUALS: Final = "equals"
Threshold = tuple[str, object, str]  # (timed feature, limit, where it flips)


class ConditionError(SegmentWorkerError, ValueError):
    """Raised when a condition is not valid in the condition language."""


# Bounds that keep every accepted condition cheap to compile and safe to evaluate: a condition
# that passes them cannot exhaust the stack, the memory or the number formats at run time.
MAX_CONDITION_CHARS: Final = 1000
MAX_DEPTH: Final = 40  # levels of the syntax tree, operators and contexts included
MAX_NUMBER: Final = 10**15


@dataclass(frozen=True, slots=True)
class Compiled:
    """A condition translated to Python source over the feature mapping ``f``."""

    source: str
    # (timed feature, source of the time-invariant expression it is compared with, where
    # the comparison flips)
    thresholds: tuple[tuple[str, str, str], ...]
    names: frozenset[str]


_COMPARE: Final[dict[type[ast.cmpop], str]] = {
    ast.Lt: "_lt",
    ast.LtE: "_le",
    ast.Gt: "_gt",
    ast.GtE: "_ge",
}
_INLINE: Final[dict[type[ast.cmpop], str]] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
# Where each comparison flips (see ABOVE), with the feature on its left, and on its right.
_FLIPS: Final[dict[type[ast.cmpop], tuple[str, str]]] = {
    ast.Lt: (REACHES, ABOVE),
    ast.LtE: (ABOVE, REACHES),
    ast.Gt: (ABOVE, REACHES),
    ast.GtE: (REACHES, ABOVE),
    ast.Eq: (EQUALS, EQUALS),
    ast.NotEq: (EQUALS, EQUALS),
    ast.In: (EQUALS, EQUALS),
    ast.NotIn: (EQUALS, EQUALS),
}
# Comparisons that cannot raise, written as Python writes them: no helper call.
_PLAIN: Final[dict[type[ast.cmpop], str]] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_ARITH: Final[dict[type[ast.operator], str]] = {
    ast.Add: "_add",
    ast.Sub: "_sub",
    ast.Mult: "_mul",
    ast.Div: "_div",
    ast.Mod: "_mod",
}


def compile_condition(
    text: str,
    features: Mapping[str, FeatureKind],
    textual: frozenset[str] = frozenset(),
    held: Mapping[str, str] | None = None,
) -> Compiled:
    """Translate ``text``; ``textual`` names the features that hold text, not numbers.
    ``held``: features read from the given expressions (locals) instead of ``f``."""
    if len(text) > MAX_CONDITION_CHARS:
        raise ConditionError(f"longer than {MAX_CONDITION_CHARS} characters")
    try:
        # A long condition may be written over several lines (TOML's triple quotes, YAML's
        # `|`): a line end is a space. (No string literal can hold one: nothing else moves.)
        tree = ast.parse(text.replace("\r", " ").replace("\n", " ").strip(), mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"syntax error at column {exc.offset}: {exc.msg}") from None
    if _depth(tree) > MAX_DEPTH:
        raise ConditionError(f"nested more than {MAX_DEPTH} levels deep")
    translator = _Translator(features, textual, held or {})
    source = translator.expr(tree.body)
    # Only ever an `if` test, which takes the truth value itself: no bool() call per test.
    return Compiled(f"({source})", tuple(translator.thresholds), frozenset(translator.names))


class _Translator:
    def __init__(
        self, features: Mapping[str, FeatureKind], textual: frozenset[str], held: Mapping[str, str]
    ) -> None:
        self.features = features
        self.textual = textual
        self.held = held
        self.temps = 0
        self.thresholds: list[tuple[str, str, str]] = []
        self.names: set[str] = set()

    def expr(self, node: ast.expr, *, compared: bool = False) -> str:
        if isinstance(node, ast.BoolOp):
            joiner = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + joiner.join(self.expr(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(not {self.expr(node.operand)})"
            if isinstance(node.op, ast.USub):
                self._check_numeric(node.operand)
                return f"_neg({self.expr(node.operand)})"
            raise ConditionError(f"operator {type(node.op).__name__} is not supported")
        if isinstance(node, ast.BinOp):
            fn = _ARITH.get(type(node.op))
            if fn is None:
                raise ConditionError(f"operator {type(node.op).__name__} is not supported")
            self._check_numeric(node.left)
            self._check_numeric(node.right)
            return f"{fn}({self.expr(node.left)}, {self.expr(node.right)})"
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name):
            return self.name(node.id, compared=compared)
        if isinstance(node, ast.Attribute):
            return self.trait(node)
        if isinstance(node, ast.Constant):
            value = node.value
            # int and float apart: the compiled core treats an int | float as a C double,
            # which a constant of thousands of digits does not fit
            too_big = (isinstance(value, int) and abs(value) > MAX_NUMBER) or (
                isinstance(value, float) and not abs(value) <= MAX_NUMBER  # inf, nan too
            )
            if too_big:
                raise ConditionError("numbers must be finite and at most 1e15 in size")
            if node.value is None or isinstance(node.value, bool | int | float | str):
                return repr(node.value)
            raise ConditionError(f"constant {node.value!r} is not supported")
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = [self.expr(e) for e in node.elts]
            if not all(isinstance(e, ast.Constant) for e in node.elts):
                raise ConditionError("lists may hold constants only")
            return "(" + "".join(f"{i}, " for i in items) + ")"
        raise ConditionError(f"{type(node).__name__} is not allowed in a condition")

    def _check_numeric(self, node: ast.expr) -> None:
        """Arithmetic is on numbers only: ``'a' * 10**10`` or ``-(1,)`` would exhaust memory
        or fail when evaluated."""
        if (
            isinstance(node, ast.Tuple | ast.List | ast.Set)
            or (isinstance(node, ast.Constant) and isinstance(node.value, str))
            or (isinstance(node, ast.Name) and node.id in self.textual)
        ):
            raise ConditionError("arithmetic works on numbers only, not on text or lists")

    def name(self, ident: str, *, compared: bool) -> str:
        kind = self.features.get(ident)
        if kind is None:
            close = difflib.get_close_matches(ident, list(self.features), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConditionError(f"unknown feature {ident!r}{hint}")
        if kind is FeatureKind.DAYS_SINCE and not compared:
            raise ConditionError(
                f"{ident!r} grows every day: compare it directly with a fixed value "
                f"(e.g. {ident} > 30), not inside arithmetic or as a truth value"
            )
        if kind is FeatureKind.MODEL and not compared:
            raise ConditionError(
                f"{ident!r} changes every day: compare it directly with a fixed value "
                f"(e.g. {ident} < 0.3), not inside arithmetic or as a truth value"
            )
        self.names.add(ident)
        return self.held.get(ident) or f"f[{ident!r}]"

    def trait(self, node: ast.Attribute) -> str:
        if not (isinstance(node.value, ast.Name) and node.value.id == TRAIT):
            raise ConditionError(
                "Attribute is not allowed in a condition (traits only: trait.<name>)"
            )
        name = node.attr
        if not (name.isascii() and name[:1].isalpha() and name.lower() == name):
            raise ConditionError(f"trait names are a-z, 0-9 and _: {name!r}")
        key = f"{TRAIT}.{name}"
        self.names.add(key)
        return f"f.get({key!r})"

    def compare(self, node: ast.Compare) -> str:
        operands = [node.left, *node.comparators]
        parts = []
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            fn, plain = _COMPARE.get(type(op)), _PLAIN.get(type(op))
            if fn is None and plain is None:  # pragma: no cover - all but Is/IsNot are mapped
                raise ConditionError(f"comparison {type(op).__name__} is not supported")
            if isinstance(op, ast.In | ast.NotIn) and not isinstance(
                right, ast.Tuple | ast.List | ast.Set
            ):
                raise ConditionError("'in' needs a literal list, e.g. region in ('A', 'B')")
            inline = _INLINE.get(type(op))
            if inline is not None:
                self._check_ordering(left, right)
            on_left, on_right = _FLIPS[type(op)]
            a, b = self.operand(left, right, on_left), self.operand(right, left, on_right)
            if isinstance(op, ast.Eq | ast.NotEq):
                parts.append(f"({a} {plain} {b})")  # plain equality: a missing value is None
            elif plain is not None:  # in, not in: a missing value is in no list
                self.temps += 1
                parts.append(
                    f"((_v{self.temps} := {a}) is not None and _v{self.temps} {plain} {b})"
                )
            elif inline is not None and _is_number(right) and isinstance(left, ast.Name):
                # Hot path: feature vs number, null-safe without a helper call.
                self.temps += 1
                parts.append(
                    f"((_v{self.temps} := {a}) is not None and _v{self.temps} {inline} {b})"
                )
            else:
                parts.append(f"{fn}({a}, {b})")
        return "(" + " and ".join(parts) + ")"

    def _check_ordering(self, left: ast.expr, right: ast.expr) -> None:
        for side, other in ((left, right), (right, left)):
            if isinstance(side, ast.Name) and side.id in self.textual and _is_number(other):
                raise ConditionError(f"{side.id!r} is text; it cannot be ordered against a number")
            if (
                isinstance(side, ast.Constant)
                and isinstance(side.value, str)
                and isinstance(other, ast.Name)
                and other.id not in self.textual
            ):
                raise ConditionError(f"{other.id!r} is a number; compare it with a number")

    def operand(self, node: ast.expr, other: ast.expr, flips: str) -> str:
        if isinstance(node, ast.Name) and self.features.get(node.id) in _TIMED:
            moving = self._time_dependent(other)
            if moving:
                raise ConditionError(
                    f"{node.id!r} may only be compared with a value that does not change as "
                    f"time passes; {moving!r} does"
                )
            source = self.name(node.id, compared=True)
            self.thresholds.append((node.id, self.expr(other), flips))
            return source
        return self.expr(node)

    def _time_dependent(self, node: ast.expr) -> str | None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                kind = self.features.get(sub.id)
                if kind is not None and kind is not FeatureKind.INVARIANT:
                    return sub.id
        return None


def _depth(tree: ast.AST) -> int:
    """Depth of ``tree``, walked without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


_TIMED: Final = (FeatureKind.DAYS_SINCE, FeatureKind.MODEL)  # flips are found from thresholds


def _is_number(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )


def _safe(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        try:
            return op(a, b)
        except (TypeError, ZeroDivisionError, OverflowError):
            return None

    return apply


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def apply(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        try:
            return bool(op(a, b))
        except TypeError:
            return False

    return apply


HELPERS: Final[dict[str, object]] = {
    "__builtins__": {},
    "_lt": _ordered(operator.lt),
    "_le": _ordered(operator.le),
    "_gt": _ordered(operator.gt),
    "_ge": _ordered(operator.ge),
    "_add": _safe(operator.add),
    "_sub": _safe(operator.sub),
    "_mul": _safe(operator.mul),
    "_div": _safe(operator.truediv),
    "_mod": _safe(operator.mod),
    "_neg": lambda a: None if a is None or isinstance(a, str) else -a,
}
