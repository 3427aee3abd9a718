"""The rules file: dimensions, classes and thresholds, validated and compiled at load.

A rules file is TOML (see ``default_rules.toml``) or YAML (rules_syntax.py). Loading
validates every field and condition and reports every problem with its path
(``dimensions[2].classes[0].when``; the tables are read in rules_tables.py), hashes the
parsed file into a version that is stamped on every change event, and compiles all
dimensions into one Python function (classifier.py) so that classifying a customer costs a
few µs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final

from worker.core.classifier import compile_classifier
from worker.core.conditions import FeatureKind, Threshold, compile_condition
from worker.core.dimensions import Classes, Consent, Dimension
from worker.core.features import (
    TEXTUAL,
    Facts,
    Features,
    Score,
    compile_features,
    day_offsets,
    day_source,
    feature_kinds,
    score_limits,
)
from worker.core.predict import Model
from worker.core.rules_syntax import SyntaxProblem, read_document
from worker.core.rules_tables import (
    MAX_CLASSES,
    FieldError,
    Problems,
    check_keys,
    model_feature_names,
    read_activity,
    read_array,
    read_calendar,
    read_consent,
    read_days,
    read_dimension,
    read_model,
    read_rate,
    read_score,
    read_segment,
    read_table,
    refuse_model_features,
)
from worker.core.state import PAID, PLACED, Activity
from worker.core.timeutil import UTC_CALENDAR, Calendar
from worker.errors import SegmentWorkerError

_COUNTING: Final = {"paid": PAID, "placed": PLACED | PAID}
# A file larger than this is refused unread (the other bounds: rules_tables.py).
MAX_RULES_BYTES: Final = 1 << 20


class RulesError(SegmentWorkerError, ValueError):
    """Raised when a rules file is not valid; each problem names the file and the field."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rules:
    version: str
    source: str
    counting: int
    windows: tuple[int, ...]
    calendar: Calendar  # the shop's dates: every day, window and due day is one of them
    activity: Activity  # which visits are key actions
    counts_key_actions: bool  # whether any condition or score reads a key_actions_<N>d
    counts_order_windows: bool  # whether any condition or score reads orders_ or spend_<N>d
    base_currency: str
    rates: Mapping[str, Decimal]
    scores: tuple[Score, ...]
    dimensions: tuple[Dimension, ...]
    classify: Callable[[Features], Classes]
    features_at: Callable[[Facts, int], Features]  # generated for these windows and scores
    # classify(features_at(facts, day)) in one generated function, features kept in locals:
    # what the engine runs per evaluation and per candidate day of the due-day search
    classes_at: Callable[[Facts, int], Classes]
    # The timed features' comparisons: feature, the value it is compared with, where it flips.
    thresholds: Callable[[Features], list[Threshold]]
    # When every such value is a constant (the usual case): the day offsets from each
    # feature's anchor at which a class can flip, score cuts included, precomputed.
    fixed_offsets: Mapping[str, tuple[int, ...]] | None
    # Read per evaluation, so fields set at load rather than properties.
    dimension_names: tuple[str, ...]
    # Whether the due-day search reads the day's features as a mapping (thresholds that
    # depend on the customer, or timed model crossings); the engine then classifies from
    # that mapping too, so that a model is evaluated once, not twice.
    search_reads_features: bool
    model: Model | None = None
    # With fixed_offsets: the (model feature, constant) comparisons, whose flips are timed.
    model_limits: tuple[tuple[str, object], ...] = ()
    consent: Consent = field(default_factory=Consent)


def default_rules_text() -> bytes:
    return resources.files("worker.core").joinpath("default_rules.toml").read_bytes()


def load_rules(path: Path | None = None) -> Rules:
    """Rules from ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return parse_rules(default_rules_text(), "<built-in defaults>")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_RULES_BYTES + 1)
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror}") from None
    return parse_rules(data, str(path))


def parse_rules(data: bytes, source: str) -> Rules:
    if len(data) > MAX_RULES_BYTES:
        raise RulesError(f"{source}: larger than {MAX_RULES_BYTES} bytes")
    try:
        doc = read_document(data.decode("utf-8-sig"), source)
    except UnicodeDecodeError as exc:
        raise RulesError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except SyntaxProblem as exc:
        raise RulesError(f"{source}: {exc}") from None
    problems = Problems()
    rules: Rules | None = None
    with problems.field():
        rules = _build(doc, source, problems)
    if rules is None:
        raise RulesError(*(f"{source}: {e.path}: {e.message}" for e in problems.found))
    return rules


def _version(doc: Mapping[str, Any]) -> str:
    """A hash of what the file says, not of its bytes: comments, whitespace, the order of
    keys in a table and the spelling of a value (1e2 or 100.0) leave the version alone, so
    such an edit neither re-evaluates every customer nor rewrites every change's stamp."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _build(doc: dict[str, Any], source: str, problems: Problems) -> Rules | None:
    """Validate every part that does not depend on a failed one (errors go to ``problems``);
    compile only a file without any (else None)."""
    with problems.field():
        check_keys(
            doc,
            {"orders", "money", "calendar", "activity", "scores", "dimensions", "segments"}
            | {"model", "consent"},
            "",
        )
    orders = read_table(doc, "orders", "")
    with problems.field():
        check_keys(orders, {"count_status", "windows"}, "orders")
    count_status = orders.get("count_status", "paid")
    with problems.field():
        if count_status not in _COUNTING:
            raise FieldError("orders.count_status", "must be 'paid' or 'placed'")
    windows = read_days(orders.get("windows", [90]), "orders.windows")

    calendar, activity = UTC_CALENDAR, Activity(frozenset(), 0)  # used only if both are valid
    with problems.field():
        calendar = read_calendar(read_table(doc, "calendar", ""))
    with problems.field():
        activity = read_activity(read_table(doc, "activity", ""), max(windows))

    money = read_table(doc, "money", "")
    with problems.field():
        check_keys(money, {"base_currency", "rates"}, "money")
    base = money.get("base_currency", "USD")
    with problems.field():
        if not isinstance(base, str) or len(base) != 3 or not base.isupper():
            raise FieldError("money.base_currency", "must be an ISO 4217 code such as 'USD'")
    rates: dict[str, Decimal] = {}
    for code, rate in read_table(money, "rates", "money").items():
        with problems.field():
            rates[code] = read_rate(rate, f"money.rates.{code}")

    scores: list[Score] = []
    for name, spec in read_table(doc, "scores", "").items():
        with problems.field():
            scores.append(read_score(name, spec, windows))
    model: Model | None = None
    with problems.field():
        model = read_model(doc["model"]) if "model" in doc else None
    kinds = feature_kinds(windows, scores)
    # A score that failed still names its feature, so conditions using it are not also wrong.
    kinds |= feature_kinds((), [Score(n, "", (), True) for n in read_table(doc, "scores", "")])
    # Model features are known either way, so that a typo in a dimension kept for a future
    # fit is still caught; without [model] they may only appear where requires_model is set.
    kinds.update(dict.fromkeys(model_feature_names(model), FeatureKind.MODEL))
    dimensions: list[Dimension] = []
    for i, spec in enumerate(read_array(doc, "dimensions")):
        with problems.field():
            dimensions.append(read_dimension(i, spec, kinds, problems))
    for i, spec in enumerate(read_array(doc, "segments")):
        with problems.field():
            dimensions.append(read_segment(i, spec, kinds, problems))
    with problems.field():
        if len(dimensions) > MAX_CLASSES:
            raise FieldError("dimensions", f"more than {MAX_CLASSES} dimensions and segments")
        if not (read_array(doc, "dimensions") or read_array(doc, "segments")):
            # Refused so that a file caught half-written by a hot reload cannot drop every
            # customer's classes.
            raise FieldError(
                "dimensions", "no dimension and no segment: nothing to classify (a cut-off file?)"
            )
    if model is None and "model" not in doc:
        with problems.field():
            refuse_model_features(dimensions, kinds)
        dimensions = [d for d in dimensions if not d.requires_model]
    seen: set[str] = set()
    for dim in dimensions:
        with problems.field():
            if dim.name in seen:
                raise FieldError(
                    "dimensions", f"dimension or segment {dim.name!r} is defined twice"
                )
        seen.add(dim.name)
    consent = Consent()
    with problems.field():
        consent = read_consent(read_table(doc, "consent", ""), seen)
    if problems.found:
        return None
    read = _read_by(dimensions, kinds)
    reader, model_names = _model_reader(model, read, kinds)
    by_day = day_source(tuple(windows), tuple(scores), reader, model_names)  # snapshots: all
    classify, classes_at, thresholds, fixed = compile_classifier(
        dimensions,
        kinds,
        day_source(tuple(windows), tuple(scores), reader, model_names, wanted=read),
        read,
    )
    model_limits = tuple(
        (name, limit) for name, limit, _ in fixed or () if kinds.get(name) is FeatureKind.MODEL
    )
    order_windows, key_windows = _windows_read(read, scores, kinds)
    return Rules(
        version=_version(doc),
        source=source,
        counting=_COUNTING[count_status],
        windows=tuple(windows),
        calendar=calendar,
        activity=activity,
        counts_key_actions=key_windows,
        counts_order_windows=order_windows,
        base_currency=base,
        rates=rates,
        scores=tuple(scores),
        dimensions=tuple(dimensions),
        classify=classify,
        features_at=compile_features(by_day),
        classes_at=classes_at,
        thresholds=thresholds,
        fixed_offsets=None if fixed is None else day_offsets(fixed + score_limits(scores)),
        dimension_names=tuple(d.name for d in dimensions),
        search_reads_features=fixed is None or (model is not None and bool(model_limits)),
        model=model,
        model_limits=model_limits,
        consent=consent,
    )


def _read_by(dimensions: list[Dimension], kinds: Mapping[str, FeatureKind]) -> set[str]:
    """The features (and traits) the conditions read."""
    return {
        name
        for dim in dimensions
        for text in (dim.applies, *(c.when for c in dim.classes))
        if text is not None
        for name in compile_condition(text, kinds, TEXTUAL).names
    }


def _model_reader(
    model: Model | None, read: set[str], kinds: Mapping[str, FeatureKind]
) -> tuple[Callable[[Facts, int], Features] | None, tuple[str, ...]]:
    """The model features the conditions read (each costs up to a 2F1 evaluation per day
    classified; snapshots compute all of them, and only on a change): their reader (None if
    none) and names."""
    if model is None:
        return None, ()
    names = tuple(n for n in model.feature_names if n in read)
    return ((lambda facts, day: model.values(facts, day, names)) if names else None), names


def _windows_read(
    read: set[str], scores: list[Score], kinds: Mapping[str, FeatureKind]
) -> tuple[bool, bool]:
    """Whether the conditions or scores read an order window (orders_ or spend_<N>d) and a
    key-action window (key_actions_<N>d). Without an order window, an order entering or
    leaving one moves no class: the due-day search leaves those days out; without a
    key-action window, only the latest key action's day is read, so the engine can also
    skip re-classifying on a key action dated like the latest."""
    windows = [n for n in read | {s.feature for s in scores} if kinds.get(n) is FeatureKind.WINDOW]
    keys = [n for n in windows if n.startswith("key_actions_")]
    return len(windows) > len(keys), bool(keys)
