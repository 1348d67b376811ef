"""An exposure read from an event: which unit saw which variation of which experiment.

Pure and without Beam: the exposure stage (transforms/experiments/exposures.py) dead-letters the
exposures this refuses, and the warehouse layout (transforms/warehouse/layout.py) makes the
`experiment_exposures` row of those it accepts, from the same reading. (No Beam here, nor
transforms.messages: the layout is imported by the collector's debugger, which runs without Beam.)
"""
from typing import NamedTuple, Optional, Union

from transforms.experiments.settings import ExperimentSettings, variation_text
from transforms.rules import paths
from transforms.rules.paths import MISSING

INVALID_EXPOSURE = "invalid_exposure"
_UNIT_FIELDS = {"user_id": "userId", "anonymous_id": "anonymousId"}


class Invalid(NamedTuple):
    """An exposure that cannot be analyzed: the stage's `invalid_exposure` dead letter."""
    message: str
    missing: str          # unit | experiment | variation


class Exposure(NamedTuple):
    unit_id: str
    unit_type: str        # user_id | anonymous_id (the config's experiments.unit)
    experiment_id: str
    variation_id: str     # an integer variation as its decimal string


class Reader:
    """The config's paths parsed once; `read(body)` for each event."""

    def __init__(self, settings: ExperimentSettings):
        self.event = settings.exposure_event
        self.unit_type = settings.unit
        self._unit_field = _UNIT_FIELDS[settings.unit]
        self._experiment = tuple(paths.parse(p) for p in settings.experiment_key)
        self._variation = tuple(paths.parse(p) for p in settings.variation_key)
        self._described = {"experiment": " or ".join(settings.experiment_key),
                           "variation": " or ".join(settings.variation_key)}

    def is_exposure(self, body: dict) -> bool:
        return body.get("type") == "track" and body.get("event") == self.event

    def read(self, body: dict) -> Union[Exposure, Invalid, None]:
        """The exposure a normalized event records; None for an event that is not an exposure;
        Invalid for one that lacks a unit, an experiment or a variation."""
        if not self.is_exposure(body):
            return None
        unit = variation_text(body.get(self._unit_field))
        if unit is None:
            return self._refuse(f"has no {self._unit_field} to be its unit (experiments.unit is {self.unit_type}: "
                                "set it to the id the flag SDK randomizes on)", "unit")
        experiment = self._first(body, self._experiment)
        if experiment is None:
            return self._refuse(f"has no experiment id at {self._described['experiment']} "
                                "(a non-empty string or an integer; experiments.experiment_key)", "experiment")
        variation = self._first(body, self._variation)
        if variation is None:
            return self._refuse(f"has no variation id at {self._described['variation']} "
                                "(a non-empty string or an integer; experiments.variation_key)", "variation")
        return Exposure(unit, self.unit_type, experiment, variation)

    @staticmethod
    def _first(body: dict, candidates: tuple) -> Optional[str]:
        """The first path holding a value is the one read (a later path is not a fallback for
        a present but unusable value: that is the SDK sending something wrong)."""
        for parts in candidates:
            value = paths.get(body, parts)
            if value is not MISSING and value is not None:
                return variation_text(value)
        return None

    def _refuse(self, what: str, missing: str) -> Invalid:
        return Invalid(f"the exposure event {self.event!r} {what}", missing)
