"""The Exposures stage: exposure events checked before the warehouse (docs/experiments.md#exposures).

A track event named `experiments.exposure_event` (Segment's `Experiment Viewed` by default) is an
exposure. One without a unit, an experiment id or a variation id could never be analyzed: with
`experiments.invalid_exposures: dead_letter` (the default of an `experiments:` section) it is a
dead letter `invalid_exposure` (stage `experiments`) with its payload untouched, so once the
config names the right paths (`experiments.experiment_key`...) a replay stores it; with `store`
(the default without the section) it passes as a plain event, counted `exposures_unusable.<missing>`,
and the layout writes no exposure row for it. Every other event passes unchanged. The
`experiment_exposures` row of a valid exposure is written with the event's own rows, by the
warehouse layout (transforms/warehouse/layout.py): in the same write, so it is stored exactly
when the event is and a duplicate event adds none.
"""
import apache_beam as beam

from transforms import metrics
from transforms.experiments.extract import INVALID_EXPOSURE, Invalid, Reader
from transforms.experiments.settings import ExperimentSettings
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import Event, Rejection


class ExtractExposuresFn(FallibleFn):
    STAGE = "experiments"

    def __init__(self, settings: ExperimentSettings):
        self._settings = settings
        self._reader = None

    def setup(self):
        self._reader = Reader(self._settings)

    def attempt(self, event: Event):
        found = self._reader.read(event.body)
        if isinstance(found, Invalid):
            if self._settings.invalid_exposures != "store":
                yield self.dead_letter(Rejection(INVALID_EXPOSURE, found.message, {"missing": found.missing}),
                                       event, event.body.get("messageId"))
                return
            # counted here, where the reason is known; the layout reads it again and writes no exposure row
            metrics.inc(f"exposures_unusable.{found.missing}")
        yield event


class ExtractExposures(beam.PTransform):
    """Event -> Event (`events`: all but the invalid exposures dead-lettered), `dead_letters`."""

    def __init__(self, settings: ExperimentSettings = ExperimentSettings()):
        super().__init__()
        self._settings = settings

    def expand(self, events):
        return apply_fallible(events, ExtractExposuresFn(self._settings))
