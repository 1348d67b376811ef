"""The Transform stage: the config's declarative rules, then the optional Python UDF.

Outputs: `events` (to the warehouse), `forwardable` (every event some destination may have,
stored or not: the forwarding branch reads only this, so it never needs all events merged;
an event consent keeps out of the warehouse is counted as the `consent` drop here, once,
after the rules had their say), `dead_letters`
(`transform_failed`: a UDF that raised or returned no event, rules or a UDF that left an
event invalid). Drops by rule are `filtered:<rule>`, by the UDF `udf`.
"""
from collections import Counter
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam import pvalue

from transforms import deadletter, jsonutil, metrics, normalize
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import Event, Rejection
from transforms.rules import udf as udf_module
from transforms.rules.engine import Filtered, TransformRules


class TransformSettings(NamedTuple):
    rules: tuple = ()            # the config's rule specs, plain data: compiled in setup()
    udf: Optional[str] = None    # --udf module:function


class _Failed(Exception):
    """A transformation could not produce a valid event; carries the dead letter's rejection."""

    def __init__(self, rejection: Rejection):
        super().__init__(rejection.message)
        self.rejection = rejection


class ApplyTransformsFn(FallibleFn):
    STAGE = "transform"
    FORWARDABLE = "forwardable"

    def __init__(self, settings: TransformSettings):
        self._settings = settings
        self._rules = self._udf = self._counts = None

    def setup(self):
        self._rules = TransformRules(list(self._settings.rules))  # reads salts here, on the worker
        self._udf = udf_module.load(self._settings.udf) if self._settings.udf else None

    def start_bundle(self):
        self._counts = Counter()  # summed per bundle: a Beam counter per event per rule is costly

    def attempt(self, event: Event):
        try:
            body = self._transform(event)
        except _Failed as failed:
            yield self.dead_letter(failed.rejection, event, event.body.get("messageId"))
            return
        if body is None:
            return
        if body is not event.body:
            event = event._replace(body=body)
        if event.store:
            yield event
        else:
            self._counts["dropped.consent"] += 1
        if event.destinations:
            yield pvalue.TaggedOutput(self.FORWARDABLE, event)

    def _transform(self, event: Event):
        """The transformed body, or None when a rule or the UDF dropped the event."""
        body = event.body
        try:
            result = self._rules.apply(body, event.source, self._counts)
        except Exception as exc:  # noqa: BLE001 - kept as a dead letter with the cause, never lost
            raise _Failed(_exception("rules", "a transformation rule failed", exc)) from exc
        if isinstance(result, Filtered):
            self._counts[f"dropped.filtered:{result.rule}"] += 1
            return None
        if result is not body and self._rules.touches_identity:
            result = _still_valid(result, "the transformation rules left an invalid event")
        if self._udf is not None:
            result = self._apply_udf(result)
        return result

    def _apply_udf(self, body: dict):
        spec = self._settings.udf
        try:
            result = self._udf(udf_module.private_copy(body))
        except Exception as exc:  # noqa: BLE001 - the UDF is the user's code: any failure is a dead letter
            raise _Failed(_exception("udf", f"the UDF {spec} raised", exc, udf=spec)) from exc
        if result is None:
            self._counts["dropped.udf"] += 1
            return None
        if not isinstance(result, dict):
            raise _Failed(Rejection("transform_failed", f"the UDF {spec} returned {type(result).__name__}, "
                                    "expected an event (dict) or None", {"udf": spec}))
        try:
            jsonutil.dumps(result)
        except TypeError as exc:
            raise _Failed(Rejection("transform_failed", f"the UDF {spec} returned a value that is not JSON: {exc}",
                                    {"udf": spec})) from exc
        return _still_valid(result, f"the UDF {spec} returned an invalid event", udf=spec)

    def finish_bundle(self):
        for name, value in self._counts.items():
            metrics.inc(name if name.startswith("dropped.") else f"transforms.{name}", value)


def _exception(where: str, what: str, exc: Exception, **details) -> Rejection:
    line = deadletter.last_line(exc)
    return Rejection("transform_failed", f"{what}: {line}",
                     {"failed_in": where, "exception": line, "raised_at": deadletter.raised_at(exc), **details})


def _still_valid(body: dict, what: str, **details) -> dict:
    checked = normalize.revalidate(body)
    if isinstance(checked, Rejection):
        raise _Failed(Rejection("transform_failed", f"{what}: {checked.message}",
                                {"cause": checked.error_type, **(checked.details or {}), **details}))
    return checked


class ApplyTransforms(beam.PTransform):
    """Event -> Event (`events`), `forwardable` and `dead_letters`."""

    def __init__(self, settings: TransformSettings = TransformSettings()):
        super().__init__()
        self._settings = settings

    def expand(self, events):
        return apply_fallible(events, ApplyTransformsFn(self._settings), ApplyTransformsFn.FORWARDABLE)
