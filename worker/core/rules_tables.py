"""Reading a rules file's tables into their values: each reader checks its fields and
raises a FieldError that names the field's path, and Problems collects them, so that one
load reports every independent problem in a file."""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from worker.core.conditions import MAX_NUMBER, ConditionError, FeatureKind, compile_condition
from worker.core.dimensions import SEGMENT_CLASS, ClassRule, Consent, Dimension
from worker.core.events import valid_trait_name
from worker.core.features import TEXTUAL, Score, feature_kinds
from worker.core.predict import DEFAULT_HORIZONS, BgNbd, GammaGamma, Model, model_features
from worker.core.state import Activity
from worker.core.timeutil import DAY_MS, Calendar

_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
# Bounds that keep a valid file cheap to load and safe to run: every amount converted with a
# rate in this range fits the state's integers, and no file can nest or grow the generated
# classifier beyond what Python compiles.
MAX_CLASSES: Final = 100  # per dimension, and dimensions plus segments
RATE_RANGE: Final = (Decimal("1e-9"), Decimal("1e9"))
KEY_ACTIONS: Final = ("login", "add_to_cart", "checkout", "app_open", "search")


class FieldError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


class Problems:
    """Collects field errors, so that one load reports every independent problem in a file."""

    def __init__(self) -> None:
        self.found: list[FieldError] = []

    @contextlib.contextmanager
    def field(self) -> Iterator[None]:
        """Record a field error raised inside the block and go on after it."""
        try:
            yield
        except FieldError as exc:
            self.found.append(exc)


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_table(doc: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise FieldError(_join(path, key), "must be a table")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_keys(table: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise FieldError(
                _join(path, key),
                f"unknown key{did_you_mean(key, allowed)} (allowed: {', '.join(sorted(allowed))})",
            )


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _NAME_CHARS:
        raise FieldError(path, "must be a non-empty name of a-z, 0-9 and _")
    return value


_MODEL_TABLE: Final = {"bgnbd": ("r", "alpha", "a", "b"), "gamma_gamma": ("p", "q", "v")}


def read_model(spec: Any) -> Model:
    if not isinstance(spec, dict):
        raise FieldError("model", "must be a table")
    check_keys(spec, {*_MODEL_TABLE, "horizons", "annual_discount_rate", "fitted"}, "model")
    params: dict[str, list[float]] = {}
    for table, names in _MODEL_TABLE.items():
        path = f"model.{table}"
        if table not in spec:
            raise FieldError(path, "missing (fill it with `segment-worker fit --write-rules`)")
        values = read_table(spec, table, "model")
        check_keys(values, set(names), path)
        params[table] = []
        for name in names:
            value = values.get(name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not 0 < value < 1e12
            ):
                raise FieldError(f"{path}.{name}", "must be a positive number")
            params[table].append(float(value))
    if params["gamma_gamma"][1] <= 1:
        raise FieldError("model.gamma_gamma.q", "must be above 1 (else mean spend is unbounded)")
    horizons = read_days(spec.get("horizons", list(DEFAULT_HORIZONS)), "model.horizons")
    rate = spec.get("annual_discount_rate", 0.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise FieldError("model.annual_discount_rate", "must be a number from 0 to 1")
    fitted = spec.get("fitted", {})
    if not isinstance(fitted, dict):
        raise FieldError("model.fitted", "must be a table (what the fit saw; not read)")
    return Model(
        BgNbd(*params["bgnbd"]), GammaGamma(*params["gamma_gamma"]), tuple(horizons), float(rate)
    )


def model_feature_names(model: Model | None) -> tuple[str, ...]:
    return tuple(model_features(DEFAULT_HORIZONS if model is None else model.horizons))


def refuse_model_features(dimensions: list[Dimension], kinds: Mapping[str, FeatureKind]) -> None:
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
                raise FieldError(
                    dim.name,
                    f"{model_used[0]!r} needs a fitted [model] table in the rules "
                    "(segment-worker fit --write-rules), or `requires_model = true` on this "
                    "dimension to keep it until there is one",
                )


def read_calendar(table: dict[str, Any]) -> Calendar:
    check_keys(table, {"timezone"}, "calendar")
    zone = table.get("timezone", "UTC")
    if not isinstance(zone, str):
        raise FieldError("calendar.timezone", "must be an IANA time zone name")
    try:
        return Calendar(zone)
    except ValueError as exc:
        raise FieldError("calendar.timezone", str(exc)) from None


def read_activity(table: dict[str, Any], longest_window: int) -> Activity:
    check_keys(table, {"key_actions"}, "activity")
    actions = table.get("key_actions", list(KEY_ACTIONS))
    if not isinstance(actions, list) or not all(
        isinstance(a, str) and 1 <= len(a) <= 100 for a in actions
    ):
        raise FieldError("activity.key_actions", "must be a list of visit actions (1..100 chars)")
    # Kept back from the latest key action: the longest window, plus a day either side for
    # a clock change and for the latest's own date.
    return Activity(frozenset(actions), (longest_window + 2) * DAY_MS)


def read_consent(table: dict[str, Any], dimensions: set[str]) -> Consent:
    check_keys(table, {"trait", "suppress"}, "consent")
    trait = table.get("trait", Consent().trait)
    if not isinstance(trait, str) or not valid_trait_name(trait):
        raise FieldError("consent.trait", "must be a trait name (a-z, 0-9, _)")
    suppress = table.get("suppress", [])
    if not isinstance(suppress, list) or not all(isinstance(d, str) for d in suppress):
        raise FieldError("consent.suppress", "must be a list of dimension or segment names")
    unknown = sorted(set(suppress) - dimensions)
    if unknown:
        raise FieldError(
            "consent.suppress",
            f"unknown dimension or segment {unknown[0]!r}{did_you_mean(unknown[0], dimensions)}",
        )
    return Consent(trait, frozenset(suppress))


def read_days(value: object, path: str) -> list[int]:
    """A list of day counts (windows, horizons): non-empty, distinct, each 1..3660."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 3660 for d in value)
        or len(set(value)) != len(value)
    ):
        raise FieldError(path, "must be a non-empty list of distinct days (1..3660)")
    return value


def read_array(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise FieldError(key, f"must be an array of tables ([[{key}]]; YAML: a list of mappings)")
    return value


def read_rate(rate: object, path: str) -> Decimal:
    try:
        value = Decimal(str(rate))
    except InvalidOperation:
        raise FieldError(path, "must be a positive number") from None
    if isinstance(rate, bool) or not value.is_finite() or value <= 0:
        raise FieldError(path, "must be a positive number")
    if not RATE_RANGE[0] <= value <= RATE_RANGE[1]:
        raise FieldError(path, "must lie between 1e-9 and 1e9")
    return value


def read_score(name: str, spec: Any, windows: list[int]) -> Score:
    path = f"scores.{name}"
    _name(name, path)
    if not isinstance(spec, dict):
        raise FieldError(path, "must be a table")
    check_keys(spec, {"feature", "cuts", "better"}, path)
    base_kinds = feature_kinds(windows, ())
    feature = spec.get("feature")
    if feature not in base_kinds:
        hint = did_you_mean(feature, base_kinds)
        raise FieldError(f"{path}.feature", f"unknown feature {feature!r}{hint}")
    cuts = spec.get("cuts")
    if (
        not isinstance(cuts, list)
        or len(cuts) != 4
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in cuts)
        or not all(math.isfinite(c) and abs(c) <= MAX_NUMBER for c in cuts)
        or sorted(set(cuts)) != cuts
    ):
        raise FieldError(f"{path}.cuts", "must be 4 increasing numbers (scores run 1-5)")
    better = spec.get("better")
    if better not in ("higher", "lower"):
        raise FieldError(f"{path}.better", "must be 'higher' or 'lower'")
    return Score(name, feature, tuple(cuts), better == "higher")


def _condition(text: Any, path: str, kinds: Mapping[str, FeatureKind]) -> str:
    if not isinstance(text, str) or not text.strip():
        raise FieldError(path, "must be a non-empty condition string")
    try:
        compile_condition(text, kinds, TEXTUAL)
    except ConditionError as exc:
        raise FieldError(path, str(exc)) from None
    return text


def _label(value: object, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise FieldError(path, "must be a non-empty text")
    return value


def read_dimension(
    index: int, spec: Any, kinds: Mapping[str, FeatureKind], problems: Problems
) -> Dimension:
    path = f"dimensions[{index}]"
    if not isinstance(spec, dict):
        raise FieldError(path, "must be a table")
    with problems.field():
        check_keys(spec, {"name", "applies", "classes", "requires_model"}, path)
    name = _name(spec.get("name"), f"{path}.name")
    requires_model = spec.get("requires_model", False)
    if not isinstance(requires_model, bool):
        raise FieldError(f"{path}.requires_model", "must be true or false")
    applies = spec.get("applies")
    if applies is not None:
        with problems.field():
            _condition(applies, f"{path}.applies", kinds)
    raw_classes = spec.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes or len(raw_classes) > MAX_CLASSES:
        raise FieldError(
            f"{path}.classes",
            f"must be a list of 1 to {MAX_CLASSES} {{name, when, label}} tables",
        )
    classes: list[ClassRule] = []
    for j, raw in enumerate(raw_classes):
        cpath = f"{path}.classes[{j}]"
        with problems.field():
            cls = _class(raw, cpath, j == len(raw_classes) - 1, kinds)
            if any(c.name == cls.name for c in classes):
                raise FieldError(f"{cpath}.name", f"class {cls.name!r} appears twice")
            classes.append(cls)
    return Dimension(name, applies, tuple(classes), requires_model)


def _class(cls: Any, path: str, last: bool, kinds: Mapping[str, FeatureKind]) -> ClassRule:
    if not isinstance(cls, dict):
        raise FieldError(path, "must be a table")
    check_keys(cls, {"name", "when", "label"}, path)
    name = _name(cls.get("name"), f"{path}.name")
    when = cls.get("when")
    if when is not None:
        _condition(when, f"{path}.when", kinds)
    elif not last:
        raise FieldError(f"{path}.when", "only the last class may omit 'when' (fallback)")
    return ClassRule(name, when, _label(cls.get("label"), f"{path}.label"))


def read_segment(
    index: int, spec: Any, kinds: Mapping[str, FeatureKind], problems: Problems
) -> Dimension:
    path = f"segments[{index}]"
    if not isinstance(spec, dict):
        raise FieldError(path, "must be a table")
    with problems.field():
        check_keys(spec, {"name", "when", "label"}, path)
    name = _name(spec.get("name"), f"{path}.name")
    when = _condition(spec.get("when"), f"{path}.when", kinds)
    label = _label(spec.get("label"), f"{path}.label")  # of its one class
    return Dimension(name, None, (ClassRule(SEGMENT_CLASS, when, label),))
