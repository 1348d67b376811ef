"""The config's `experiments:` section, typed: which events are exposures, where their keys are,
the experiments' definitions and the metrics the analysis computes (docs/experiments.md).

Shared by the pipeline's exposure stage (transforms/experiments/exposures.py) and the analysis
(analysis/); pipeline/config.py calls `parse` after the schema check, so the structure is
already right here and `parse` checks what a schema cannot say (weights summing to 1, a control
among the variations, a `when` that compiles). Every error names its key path
(`experiments.metrics[2].value`).
"""
import datetime
import math
from typing import NamedTuple, Optional

from transforms.rules import paths
from transforms.rules.conditions import ConditionError, compile_condition

METRIC_TYPES = ("binomial", "count", "mean")
UNITS = ("user_id", "anonymous_id")
# What becomes of an exposure without a unit, an experiment id or a variation id (docs/experiments.md#exposures):
# an `invalid_exposure` dead letter, or stored as a plain event without an experiment_exposures row (and counted).
INVALID_EXPOSURES = ("dead_letter", "store")
_WEIGHTS_TOLERANCE = 1e-6  # 1/3 written as 0.333333 three times must still sum to 1


class Metric(NamedTuple):
    name: str
    type: str                       # binomial | count | mean
    event: str                      # the track event's name (its `event`, not its table)
    value: Optional[str]            # dotted path (properties.revenue) of the summed number; mean only
    when: Optional[dict]            # a condition in the rules' language (transforms/rules/conditions.py)
    window_hours: float             # the section's conversion_window_hours unless the metric sets its own
    delay_hours: float = 0.0        # moves the whole window later: [first + delay, first + delay + window)


class Definition(NamedTuple):
    control: Optional[str] = None         # a variation id (as stored: ints as their decimal string)
    weights: Optional[tuple] = None       # expected split, in the order of `variations` when given
    start: Optional[datetime.datetime] = None  # aware, UTC
    end: Optional[datetime.datetime] = None
    variations: Optional[tuple] = None    # variation ids, control first unless `control` says otherwise


class ExperimentSettings(NamedTuple):
    exposure_event: str = "Experiment Viewed"  # Segment's A/B testing spec
    experiment_key: tuple = ("properties.experiment_id", "properties.experimentId")  # first present wins
    variation_key: tuple = ("properties.variation_id", "properties.variationId")
    unit: str = "user_id"                      # user_id | anonymous_id
    conversion_window_hours: float = 72.0
    definitions: dict = {}                     # experiment id -> Definition; never written to
    metrics: tuple = ()                        # Metric, in config order
    cuped_enabled: bool = False
    cuped_lookback_days: float = 14.0
    # `store` when the section is absent, so a config written before experiments existed loses no event (an
    # anonymous visitor's Experiment Viewed stays in tracks); `dead_letter` is parse's default for a section.
    invalid_exposures: str = "store"


class SettingsError(ValueError):
    """A mistake in the section: `where` is its key path, `message` says what is wrong."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def variation_text(value) -> Optional[str]:
    """An id as stored: a non-empty string as is, an int as its decimal string (GrowthBook sends
    variation 0, 1...); None for anything else (bools, floats, objects, empty strings)."""
    if type(value) is int:
        return str(value)
    if type(value) is str and value:
        return value
    return None


def parse(section, where: str = "experiments") -> ExperimentSettings:
    """The `experiments:` mapping (None: absent) -> ExperimentSettings, or SettingsError."""
    if section is None:
        return ExperimentSettings()
    default = ExperimentSettings()
    window = _positive(section, "conversion_window_hours", default.conversion_window_hours, where)
    unit = section.get("unit", default.unit)
    if unit not in UNITS:
        raise SettingsError(f"{where}.unit", f"{unit!r} is not one of {', '.join(UNITS)}")
    invalid = section.get("invalid_exposures", "dead_letter")
    if invalid not in INVALID_EXPOSURES:
        raise SettingsError(f"{where}.invalid_exposures", f"{invalid!r} is not one of {', '.join(INVALID_EXPOSURES)}")
    cuped = section.get("cuped") or {}
    return ExperimentSettings(
        exposure_event=section.get("exposure_event", default.exposure_event),
        experiment_key=_paths(section.get("experiment_key", default.experiment_key), f"{where}.experiment_key"),
        variation_key=_paths(section.get("variation_key", default.variation_key), f"{where}.variation_key"),
        unit=unit, conversion_window_hours=window,
        definitions={str(key): _definition(spec or {}, f"{where}.definitions.{key}")
                     for key, spec in (section.get("definitions") or {}).items()},
        metrics=_metrics(section.get("metrics") or (), window, f"{where}.metrics"),
        cuped_enabled=bool(cuped.get("enabled", default.cuped_enabled)),
        cuped_lookback_days=_positive(cuped, "lookback_days", default.cuped_lookback_days, f"{where}.cuped"),
        invalid_exposures=invalid)


def _positive(section: dict, key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{where}.{key}", f"must be a positive number of {key.rsplit('_', 1)[-1]}, "
                                              f"found {value!r}")
    return float(value)


def _paths(spec, where: str) -> tuple:
    """One path or a list of them -> a tuple of their texts, each parsed once to check it."""
    texts = [spec] if isinstance(spec, str) else list(spec)
    if not texts:
        raise SettingsError(where, "needs at least one path")
    for index, text in enumerate(texts):
        try:
            paths.parse(text)
        except paths.PathError as exc:
            raise SettingsError(f"{where}[{index}]" if not isinstance(spec, str) else where, str(exc)) from None
    return tuple(texts)


def _metrics(specs, window: float, where: str) -> tuple:
    metrics, seen = [], {}
    for index, spec in enumerate(specs):
        here = f"{where}[{index}]"
        name = spec["name"]
        if name in seen:
            raise SettingsError(f"{here}.name", f"{name!r} is already the name of {where}[{seen[name]}]")
        seen[name] = index
        kind = spec["type"]
        if kind not in METRIC_TYPES:
            raise SettingsError(f"{here}.type", f"{kind!r} is not one of {', '.join(METRIC_TYPES)}")
        value = spec.get("value")
        if kind == "mean" and value is None:
            raise SettingsError(here, "a mean metric needs `value`, the path of the number it sums "
                                      "(e.g. properties.revenue)")
        if kind != "mean" and value is not None:
            raise SettingsError(f"{here}.value", f"a {kind} metric takes no value (only mean metrics sum one)")
        if value is not None:
            _paths(value, f"{here}.value")
        when = spec.get("when")
        if when is not None:
            try:
                compile_condition(when, f"{here}.when")
            except ConditionError as exc:
                raise SettingsError(exc.where, exc.message) from None
        delay = spec.get("delay_hours", 0.0)
        if type(delay) not in (int, float) or not math.isfinite(delay) or delay < 0:
            raise SettingsError(f"{here}.delay_hours", f"must be a number of hours, 0 or more, found {delay!r}")
        metrics.append(Metric(name, kind, spec["event"], value, when,
                              _positive(spec, "window_hours", window, here), float(delay)))
    return tuple(metrics)


def _definition(spec: dict, where: str) -> Definition:
    variations = spec.get("variations")
    if variations is not None:
        variations = tuple(_variation(v, f"{where}.variations[{i}]") for i, v in enumerate(variations))
        if len(set(variations)) != len(variations):
            raise SettingsError(f"{where}.variations", "a variation is listed more than once")
    control = _variation(spec["control"], f"{where}.control") if spec.get("control") is not None else None
    if control is not None and variations is not None and control not in variations:
        raise SettingsError(f"{where}.control", f"{control!r} is not one of the variations "
                                                f"({', '.join(variations)})")
    weights = spec.get("weights")
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise SettingsError(f"{where}.weights", "each weight is a number from 0 to 1")
        if abs(sum(weights) - 1.0) > _WEIGHTS_TOLERANCE:
            raise SettingsError(f"{where}.weights", f"must sum to 1, found {sum(weights):g}")
        if variations is not None and len(weights) != len(variations):
            raise SettingsError(f"{where}.weights", f"{len(weights)} weights for {len(variations)} variations")
    start, end = _instant(spec.get("start"), f"{where}.start"), _instant(spec.get("end"), f"{where}.end")
    if start is not None and end is not None and end <= start:
        raise SettingsError(f"{where}.end", "must be after start")
    return Definition(control, weights, start, end, variations)


def _variation(value, where: str) -> str:
    text = variation_text(value)
    if text is None:
        raise SettingsError(where, f"a variation id is a non-empty string or an integer, found {value!r}")
    return text


def _instant(value, where: str) -> Optional[datetime.datetime]:
    """YAML gives a datetime (or a date) for 2026-11-01T00:00:00Z; JSON gives a string. Aware, in
    UTC; a time without a zone is taken as UTC, like the pipeline's event timestamps."""
    if value is None:
        return None
    if type(value) is datetime.date:
        value = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise SettingsError(where, f"{value!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z") from None
    elif not isinstance(value, datetime.datetime):
        raise SettingsError(where, f"a time such as 2026-11-01T00:00:00Z, found {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)
