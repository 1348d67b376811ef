"""Fallible stages: one error output, whatever goes wrong.

Every stage that can fail is a `FallibleFn` applied with `apply_fallible`. A stage's
`attempt(element)` yields its outputs; a dead letter it anticipates is `self.dead_letter(...)`
among them. Anything `attempt` did not anticipate (a bug, a library raising something new)
becomes a dead letter too, `internal_error`, with the exception's type, message and line, and
the stage's input untouched as the payload: the element is not retried forever (a streaming
job would wedge on it) and not lost, and once the cause is fixed it can be replayed.

All or nothing per element: `attempt`'s outputs are collected first and emitted only when it
finished, so an element that fails half-way yields its internal_error dead letter alone,
never some outputs and a dead letter too (conservation counts each event once). For the same
reason `attempt` counts what must balance (read, events, drops) only after its last possible
failure. Dead letters are counted here, as they are emitted.
"""
import apache_beam as beam
from apache_beam import pvalue

from transforms import deadletter, metrics

DEAD_LETTERS = "dead_letters"


class FallibleFn(beam.DoFn):
    """Base of every stage DoFn whose failures are dead letters; subclasses set STAGE (the
    records' `error_stage`) and implement attempt()."""
    STAGE = None

    def attempt(self, element):
        raise NotImplementedError

    def process(self, element):
        return self.emit(element, self.attempt)

    def emit(self, element, attempt) -> list:
        """`attempt(element)`'s outputs, all or nothing, its failure the element's dead letters (a
        stage that finishes an element later, on a thread of its own, passes what collects it).
        A list, not a generator: every element of every stage comes through here."""
        try:
            outputs = list(attempt(element))
        except Exception as exc:  # noqa: BLE001 - unanticipated: a dead letter, never a failed bundle
            outputs = self.internal_errors(element, exc)
        for output in outputs:
            if type(output) is pvalue.TaggedOutput and output.tag == DEAD_LETTERS:
                metrics.dead_lettered(self.STAGE, output.value["error_type"])
        return outputs

    def dead_letter(self, rejection, event, message_id=None, destination=None) -> pvalue.TaggedOutput:
        """An anticipated failure of `event` (an Event) as this stage's dead letter."""
        return pvalue.TaggedOutput(DEAD_LETTERS, deadletter.from_event(
            self.STAGE, rejection, event, message_id, destination=destination))

    def failed_inputs(self, element) -> list:
        """The inputs an element stands for, each to get its own dead letter (RawMessages or
        Events); a stage taking batches returns their members."""
        return [element]

    def internal_errors(self, element, exc: Exception) -> list:
        rejection = deadletter.internal_error(self.STAGE, exc)
        return [pvalue.TaggedOutput(DEAD_LETTERS, deadletter.for_input(self.STAGE, rejection, item))
                for item in self.failed_inputs(element)]


def apply_fallible(pcoll, fn: FallibleFn, *tags: str, main: str = "events", label: str = None):
    """`pcoll | label >> ParDo(fn)` with its outputs: `main`, the extra `tags`, and `dead_letters`.
    Without a label the step keeps Beam's default name, `ParDo(<fn class>)`."""
    step = beam.ParDo(fn).with_outputs(DEAD_LETTERS, *tags, main=main)
    return pcoll | (label >> step if label else step)
