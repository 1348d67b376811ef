"""The Contracts stage: normalized events in; conforming (or allowed) events out, blocked
and unplanned-and-blocked events to the dead letters, where they wait for a fixed
contract and a replay."""
import apache_beam as beam

from transforms import metrics
from transforms.contracts.enforce import ContractEnforcer
from transforms.contracts.model import ContractSettings
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import Event


class ValidateContractsFn(FallibleFn):
    STAGE = "contracts"

    def __init__(self, settings: ContractSettings):
        self._settings = settings  # plain schemas: compiled per worker in setup()
        self._enforcer = None

    def setup(self):
        self._enforcer = ContractEnforcer(self._settings)

    def attempt(self, event: Event):
        verdict = self._enforcer.check(event.body)
        if verdict.unplanned:
            metrics.inc("contracts.unplanned")
        if verdict.violations:  # blocked ones too: their dead letter's error_details lists them
            metrics.inc("contracts.violations", len(verdict.violations))
        if verdict.rejection is not None:
            yield self.dead_letter(verdict.rejection, event, event.body.get("messageId"))
            return
        if verdict.violations:
            omitted = sum(v["action"] == "omitted" for v in verdict.violations)
            if omitted:
                metrics.inc("contracts.omitted", omitted)
            yield event._replace(body=verdict.body, violations=verdict.violations)
            return
        yield event


class ValidateContracts(beam.PTransform):
    """Event -> Event (main output `events`) and dead-letter records (`dead_letters`)."""

    def __init__(self, settings: ContractSettings):
        super().__init__()
        self._settings = settings

    def expand(self, events):
        return apply_fallible(events, ValidateContractsFn(self._settings))
