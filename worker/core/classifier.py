"""The rules' classifiers, generated as Python source from validated conditions and
compiled once at load: a first-match-wins chain per dimension, with the features the
conditions read held in locals."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from worker.core.conditions import HELPERS, Compiled, FeatureKind, Threshold, compile_condition
from worker.core.dimensions import Classes, Dimension
from worker.core.features import TEXTUAL, DaySource, Facts, Features


def compile_classifier(
    dimensions: list[Dimension],
    kinds: Mapping[str, FeatureKind],
    source: DaySource,
    read: set[str],
) -> tuple[
    Callable[[Features], Classes],
    Callable[[Facts, int], Classes],
    Callable[[Features], list[Threshold]],
    list[Threshold] | None,
]:
    """Generate, from validated conditions, the classifier over a feature mapping, the same
    over ``(facts, day)`` with the features in locals (``source``: those the conditions
    ``read``), and one threshold function."""
    thresholds: list[tuple[str, str, str]] = []
    held = source.expressions()

    def over_mapping(text: str) -> str:
        compiled: Compiled = compile_condition(text, kinds, TEXTUAL)
        thresholds.extend(compiled.thresholds)
        return compiled.source

    def over_locals(text: str) -> str:
        return compile_condition(text, kinds, TEXTUAL, held).source

    body = ["def classify(f):", "    out = {}"]
    body += _chains(dimensions, over_mapping, [f"out[{dim.name!r}]" for dim in dimensions])
    body.append("    return out")
    # The lifetime features the conditions read, each into a local once: most chains test
    # orders_total, and a local costs less than a lookup in the mapping.
    lifetime = sorted(n for n in read if kinds.get(n) is FeatureKind.INVARIANT)
    held.update({name: f"_i_{name}" for name in lifetime})
    body += ["def classes_at(facts, day):", "    f = facts.invariant", *source.lines]
    body += [f"    _i_{name} = f[{name!r}]" for name in lifetime]
    body += _chains(dimensions, over_locals, [f"_c{i}" for i in range(len(dimensions))])
    pairs = [f"{dim.name!r}: _c{i}" for i, dim in enumerate(dimensions)]
    body.append("    return {" + ", ".join(pairs) + "}")
    unique = sorted(set(thresholds))
    body.append("def thresholds(f):")
    body.append("    return [" + ", ".join(f"({n!r}, {src}, {f!r})" for n, src, f in unique) + "]")
    namespace: dict[str, Any] = {**HELPERS, **source.namespace}
    # Safe: every condition went through the whitelist in conditions.py; names are repr()-quoted.
    exec(compile("\n".join(body), "<rules>", "exec"), namespace)
    try:
        fixed: list[Threshold] | None = [
            (name, ast.literal_eval(src), flips) for name, src, flips in unique
        ]
    except ValueError:  # some threshold depends on the customer
        fixed = None
    return namespace["classify"], namespace["classes_at"], namespace["thresholds"], fixed


def _chains(
    dimensions: list[Dimension], cond: Callable[[str], str], targets: list[str]
) -> list[str]:
    """Each dimension's first-match-wins chain, storing its class (or None) in its target."""
    body = []
    for dim, target in zip(dimensions, targets, strict=True):
        indent = "    "
        if dim.applies is not None:
            body.append(f"    if not {cond(dim.applies)}:")
            body.append(f"        {target} = None")
            body.append("    else:")
            indent = "        "
        keyword = "if"
        for cls in dim.classes:
            if cls.when is None:
                body.append(f"{indent}else:" if keyword == "elif" else f"{indent}if True:")
            else:
                body.append(f"{indent}{keyword} {cond(cls.when)}:")
            body.append(f"{indent}    {target} = {cls.name!r}")
            keyword = "elif"
        if dim.classes[-1].when is not None:
            body.append(f"{indent}else:")
            body.append(f"{indent}    {target} = None")
    return body
