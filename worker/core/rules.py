"""The rules file: dimensions, classes and thresholds, validated and compiled at load.

A rules file is TOML (see ``default_rules.toml``). Loading validates every field and
condition and reports every problem with its path (``dimensions[2].classes[0].when``),
hashes the parsed file into a version that is stamped on every change event, and compiles
all dimensions into one Python function so that classifying a customer costs a few µs.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Final

from worker.core.conditions import (
    HELPERS,
    MAX_NUMBER,
    Compiled,
    ConditionError,
    FeatureKind,
    Threshold,
    compile_condition,
)
from worker.core.events import valid_trait_name
from worker.core.features import (
    TEXTUAL,
    DaySource,
    Facts,
    Features,
    Score,
    compile_features,
    day_offsets,
    day_source,
    feature_kinds,
    score_limits,
)
from worker.core.predict import DEFAULT_HORIZONS, BgNbd, GammaGamma, Model, model_features
from worker.core.state import PAID, PLACED, Activity
from worker.core.timeutil import DAY_MS, UTC_CALENDAR, Calendar
from worker.errors import SegmentWorkerError

Classes = dict[str, str | None]
SEGMENT_CLASS: Final = "in"
_COUNTING: Final = {"paid": PAID, "placed": PLACED | PAID}
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
# Bounds that keep a valid file cheap to load and safe to run: every amount converted with a
# rate in this range fits the state's integers, and no file can nest or grow the generated
# classifier beyond what Python compiles.
MAX_RULES_BYTES: Final = 1 << 20
MAX_CLASSES: Final = 100  # per dimension, and dimensions plus segments
RATE_RANGE: Final = (Decimal("1e-9"), Decimal("1e9"))
KEY_ACTIONS: Final = ("login", "add_to_cart", "checkout", "app_open", "search")


class RulesError(SegmentWorkerError, ValueError):
    """Raised when a rules file is not valid; each problem names the file and the field."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ClassRule:
    name: str
    when: str | None
    label: str = ""  # what people read (the demo's view); the name when the file gives none

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    applies: str | None
    classes: tuple[ClassRule, ...]
    requires_model: bool = False  # dropped, once validated, from rules with no [model]


@dataclass(frozen=True, slots=True)
class Consent:
    """``[consent]``: while a customer's ``trait`` is false, their changes on the ``suppress``
    dimensions are withheld from the change topic (the class is still tracked)."""

    trait: str = "marketing_consent"
    suppress: frozenset[str] = frozenset()


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
    consent: Consent = Consent()


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
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RulesError(f"{source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of thousands of digits
        raise RulesError(f"{source}: {exc}") from None
    except RecursionError:
        raise RulesError(f"{source}: arrays or tables nested too deeply") from None
    problems = _Problems()
    rules: Rules | None = None
    with problems.field():
        rules = _build(doc, source, problems)
    if rules is None:
        raise RulesError(*(f"{source}: {e.path}: {e.message}" for e in problems.found))
    return rules


class _FieldError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


class _Problems:
    """Collects field errors, so that one load reports every independent problem in a file."""

    def __init__(self) -> None:
        self.found: list[_FieldError] = []

    @contextlib.contextmanager
    def field(self) -> Iterator[None]:
        """Record a field error raised inside the block and go on after it."""
        try:
            yield
        except _FieldError as exc:
            self.found.append(exc)


def _did_you_mean(word: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _table(doc: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(_join(path, key), "must be a table")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(table: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise _FieldError(
                _join(path, key),
                f"unknown key{_did_you_mean(key, allowed)} (allowed: {', '.join(sorted(allowed))})",
            )


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _NAME_CHARS:
        raise _FieldError(path, "must be a non-empty name of a-z, 0-9 and _")
    return value


def _version(doc: Mapping[str, Any]) -> str:
    """A hash of what the file says, not of its bytes: comments, whitespace, the order of
    keys in a table and the spelling of a value (1e2 or 100.0) leave the version alone, so
    such an edit neither re-evaluates every customer nor rewrites every change's stamp."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _build(doc: dict[str, Any], source: str, problems: _Problems) -> Rules | None:
    """Validate every part that does not depend on a failed one (errors go to ``problems``);
    compile only a file without any (else None)."""
    with problems.field():
        _check_keys(
            doc,
            {"orders", "money", "calendar", "activity", "scores", "dimensions", "segments"}
            | {"model", "consent"},
            "",
        )
    orders = _table(doc, "orders", "")
    with problems.field():
        _check_keys(orders, {"count_status", "windows"}, "orders")
    count_status = orders.get("count_status", "paid")
    with problems.field():
        if count_status not in _COUNTING:
            raise _FieldError("orders.count_status", "must be 'paid' or 'placed'")
    windows = orders.get("windows", [90])
    if (
        not isinstance(windows, list)
        or not windows
        or not all(
            isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 3660 for w in windows
        )
        or len(set(windows)) != len(windows)
    ):
        raise _FieldError("orders.windows", "must be a non-empty list of distinct days (1..3660)")

    calendar, activity = UTC_CALENDAR, Activity(frozenset(), 0)  # used only if both are valid
    with problems.field():
        calendar = _calendar(_table(doc, "calendar", ""))
    with problems.field():
        activity = _activity(_table(doc, "activity", ""), max(windows))

    money = _table(doc, "money", "")
    with problems.field():
        _check_keys(money, {"base_currency", "rates"}, "money")
    base = money.get("base_currency", "USD")
    with problems.field():
        if not isinstance(base, str) or len(base) != 3 or not base.isupper():
            raise _FieldError("money.base_currency", "must be an ISO 4217 code such as 'USD'")
    rates: dict[str, Decimal] = {}
    for code, rate in _table(money, "rates", "money").items():
        with problems.field():
            rates[code] = _rate(rate, f"money.rates.{code}")

    scores: list[Score] = []
    for name, spec in _table(doc, "scores", "").items():
        with problems.field():
            scores.append(_score(name, spec, windows))
    model: Model | None = None
    with problems.field():
        model = _model(doc["model"]) if "model" in doc else None
    kinds = feature_kinds(windows, scores)
    # A score that failed still names its feature, so conditions using it are not also wrong.
    kinds |= feature_kinds((), [Score(n, "", (), True) for n in _table(doc, "scores", "")])
    # Model features are known either way, so that a typo in a dimension kept for a future
    # fit is still caught; without [model] they may only appear where requires_model is set.
    kinds.update(dict.fromkeys(_model_names(model), FeatureKind.MODEL))
    dimensions: list[Dimension] = []
    for i, spec in enumerate(_list(doc, "dimensions")):
        with problems.field():
            dimensions.append(_dimension(i, spec, kinds, problems))
    for i, spec in enumerate(_list(doc, "segments")):
        with problems.field():
            dimensions.append(_segment(i, spec, kinds, problems))
    with problems.field():
        if len(dimensions) > MAX_CLASSES:
            raise _FieldError("dimensions", f"more than {MAX_CLASSES} dimensions and segments")
    if model is None and "model" not in doc:
        with problems.field():
            _refuse_model_features(dimensions, kinds)
        dimensions = [d for d in dimensions if not d.requires_model]
    seen: set[str] = set()
    for dim in dimensions:
        with problems.field():
            if dim.name in seen:
                raise _FieldError(
                    "dimensions", f"dimension or segment {dim.name!r} is defined twice"
                )
        seen.add(dim.name)
    consent = Consent()
    with problems.field():
        consent = _consent(_table(doc, "consent", ""), seen)
    if problems.found:
        return None
    read = _read_by(dimensions, kinds)
    reader, model_names = _model_reader(model, read, kinds)
    by_day = day_source(tuple(windows), tuple(scores), reader, model_names)  # snapshots: all
    classify, classes_at, thresholds, fixed = _compile(
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


_MODEL_TABLE: Final = {"bgnbd": ("r", "alpha", "a", "b"), "gamma_gamma": ("p", "q", "v")}


def _model(spec: Any) -> Model:
    if not isinstance(spec, dict):
        raise _FieldError("model", "must be a table")
    _check_keys(spec, {*_MODEL_TABLE, "horizons", "annual_discount_rate", "fitted"}, "model")
    params: dict[str, list[float]] = {}
    for table, names in _MODEL_TABLE.items():
        path = f"model.{table}"
        if table not in spec:
            raise _FieldError(path, "missing (fill it with `segment-worker fit --write-rules`)")
        values = _table(spec, table, "model")
        _check_keys(values, set(names), path)
        params[table] = []
        for name in names:
            value = values.get(name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not 0 < value < 1e12
            ):
                raise _FieldError(f"{path}.{name}", "must be a positive number")
            params[table].append(float(value))
    if params["gamma_gamma"][1] <= 1:
        raise _FieldError("model.gamma_gamma.q", "must be above 1 (else mean spend is unbounded)")
    horizons = spec.get("horizons", list(DEFAULT_HORIZONS))
    if (
        not isinstance(horizons, list)
        or not horizons
        or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 3660 for h in horizons
        )
        or len(set(horizons)) != len(horizons)
    ):
        raise _FieldError("model.horizons", "must be a non-empty list of distinct days (1..3660)")
    rate = spec.get("annual_discount_rate", 0.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise _FieldError("model.annual_discount_rate", "must be a number from 0 to 1")
    fitted = spec.get("fitted", {})
    if not isinstance(fitted, dict):
        raise _FieldError("model.fitted", "must be a table (what the fit saw; not read)")
    return Model(
        BgNbd(*params["bgnbd"]), GammaGamma(*params["gamma_gamma"]), tuple(horizons), float(rate)
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


def _model_names(model: Model | None) -> tuple[str, ...]:
    return tuple(model_features(DEFAULT_HORIZONS if model is None else model.horizons))


def _refuse_model_features(dimensions: list[Dimension], kinds: Mapping[str, FeatureKind]) -> None:
    for dim in dimensions:
        if dim.requires_model:
            continue
        texts = [dim.applies, *(c.when for c in dim.classes)]
        for text in texts:
            if text is None:
                continue
            used = compile_condition(text, kinds, TEXTUAL).names
            model_used = sorted(n for n in used if kinds.get(n) is FeatureKind.MODEL)
            if model_used:
                raise _FieldError(
                    dim.name,
                    f"{model_used[0]!r} needs a fitted [model] table in the rules "
                    "(segment-worker fit --write-rules), or `requires_model = true` on this "
                    "dimension to keep it until there is one",
                )


def _calendar(table: dict[str, Any]) -> Calendar:
    _check_keys(table, {"timezone"}, "calendar")
    zone = table.get("timezone", "UTC")
    if not isinstance(zone, str):
        raise _FieldError("calendar.timezone", "must be an IANA time zone name")
    try:
        return Calendar(zone)
    except ValueError as exc:
        raise _FieldError("calendar.timezone", str(exc)) from None


def _activity(table: dict[str, Any], longest_window: int) -> Activity:
    _check_keys(table, {"key_actions"}, "activity")
    actions = table.get("key_actions", list(KEY_ACTIONS))
    if not isinstance(actions, list) or not all(
        isinstance(a, str) and 1 <= len(a) <= 100 for a in actions
    ):
        raise _FieldError("activity.key_actions", "must be a list of visit actions (1..100 chars)")
    # Kept back from the latest key action: the longest window, plus a day either side for
    # a clock change and for the latest's own date.
    return Activity(frozenset(actions), (longest_window + 2) * DAY_MS)


def _consent(table: dict[str, Any], dimensions: set[str]) -> Consent:
    _check_keys(table, {"trait", "suppress"}, "consent")
    trait = table.get("trait", Consent().trait)
    if not isinstance(trait, str) or not valid_trait_name(trait):
        raise _FieldError("consent.trait", "must be a trait name (a-z, 0-9, _)")
    suppress = table.get("suppress", [])
    if not isinstance(suppress, list) or not all(isinstance(d, str) for d in suppress):
        raise _FieldError("consent.suppress", "must be a list of dimension or segment names")
    unknown = sorted(set(suppress) - dimensions)
    if unknown:
        raise _FieldError(
            "consent.suppress",
            f"unknown dimension or segment {unknown[0]!r}{_did_you_mean(unknown[0], dimensions)}",
        )
    return Consent(trait, frozenset(suppress))


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


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise _FieldError(key, "must be an array of tables ([[" + key + "]])")
    return value


def _rate(rate: object, path: str) -> Decimal:
    try:
        value = Decimal(str(rate))
    except InvalidOperation:
        raise _FieldError(path, "must be a positive number") from None
    if isinstance(rate, bool) or not value.is_finite() or value <= 0:
        raise _FieldError(path, "must be a positive number")
    if not RATE_RANGE[0] <= value <= RATE_RANGE[1]:
        raise _FieldError(path, "must lie between 1e-9 and 1e9")
    return value


def _score(name: str, spec: Any, windows: list[int]) -> Score:
    path = f"scores.{name}"
    _name(name, path)
    if not isinstance(spec, dict):
        raise _FieldError(path, "must be a table")
    _check_keys(spec, {"feature", "cuts", "better"}, path)
    base_kinds = feature_kinds(windows, ())
    feature = spec.get("feature")
    if feature not in base_kinds:
        hint = _did_you_mean(feature, base_kinds)
        raise _FieldError(f"{path}.feature", f"unknown feature {feature!r}{hint}")
    cuts = spec.get("cuts")
    if (
        not isinstance(cuts, list)
        or len(cuts) != 4
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in cuts)
        or not all(math.isfinite(c) and abs(c) <= MAX_NUMBER for c in cuts)
        or sorted(set(cuts)) != cuts
    ):
        raise _FieldError(f"{path}.cuts", "must be 4 increasing numbers (scores run 1-5)")
    better = spec.get("better")
    if better not in ("higher", "lower"):
        raise _FieldError(f"{path}.better", "must be 'higher' or 'lower'")
    return Score(name, feature, tuple(cuts), better == "higher")


def _condition(text: Any, path: str, kinds: Mapping[str, FeatureKind]) -> str:
    if not isinstance(text, str) or not text.strip():
        raise _FieldError(path, "must be a non-empty condition string")
    try:
        compile_condition(text, kinds, TEXTUAL)
    except ConditionError as exc:
        raise _FieldError(path, str(exc)) from None
    return text


def _label(value: object, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _FieldError(path, "must be a non-empty text")
    return value


def _dimension(
    index: int, spec: Any, kinds: Mapping[str, FeatureKind], problems: _Problems
) -> Dimension:
    path = f"dimensions[{index}]"
    if not isinstance(spec, dict):
        raise _FieldError(path, "must be a table")
    with problems.field():
        _check_keys(spec, {"name", "applies", "classes", "requires_model"}, path)
    name = _name(spec.get("name"), f"{path}.name")
    requires_model = spec.get("requires_model", False)
    if not isinstance(requires_model, bool):
        raise _FieldError(f"{path}.requires_model", "must be true or false")
    applies = spec.get("applies")
    if applies is not None:
        with problems.field():
            _condition(applies, f"{path}.applies", kinds)
    raw_classes = spec.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes or len(raw_classes) > MAX_CLASSES:
        raise _FieldError(
            f"{path}.classes",
            f"must be a list of 1 to {MAX_CLASSES} {{name, when, label}} tables",
        )
    classes: list[ClassRule] = []
    for j, raw in enumerate(raw_classes):
        cpath = f"{path}.classes[{j}]"
        with problems.field():
            cls = _class(raw, cpath, j == len(raw_classes) - 1, kinds)
            if any(c.name == cls.name for c in classes):
                raise _FieldError(f"{cpath}.name", f"class {cls.name!r} appears twice")
            classes.append(cls)
    return Dimension(name, applies, tuple(classes), requires_model)


def _class(cls: Any, path: str, last: bool, kinds: Mapping[str, FeatureKind]) -> ClassRule:
    if not isinstance(cls, dict):
        raise _FieldError(path, "must be a table")
    _check_keys(cls, {"name", "when", "label"}, path)
    name = _name(cls.get("name"), f"{path}.name")
    when = cls.get("when")
    if when is not None:
        _condition(when, f"{path}.when", kinds)
    elif not last:
        raise _FieldError(f"{path}.when", "only the last class may omit 'when' (fallback)")
    return ClassRule(name, when, _label(cls.get("label"), f"{path}.label"))


def _segment(
    index: int, spec: Any, kinds: Mapping[str, FeatureKind], problems: _Problems
) -> Dimension:
    path = f"segments[{index}]"
    if not isinstance(spec, dict):
        raise _FieldError(path, "must be a table")
    with problems.field():
        _check_keys(spec, {"name", "when", "label"}, path)
    name = _name(spec.get("name"), f"{path}.name")
    when = _condition(spec.get("when"), f"{path}.when", kinds)
    label = _label(spec.get("label"), f"{path}.label")  # of its one class
    return Dimension(name, None, (ClassRule(SEGMENT_CLASS, when, label),))


def _compile(
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
