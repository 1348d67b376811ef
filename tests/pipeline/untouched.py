"""Checks that a stage under TestPipeline never writes into the events it is given.

An assert inside the pipeline cannot see an in-place write: Beam hands the stage, and every
lambda, its own unpickled copies, so comparing the output with a value captured in a lambda
compares a copy with itself. Instead `Kept` records, in this module, each event the stage is
about to receive together with a deep copy taken before the stage sees it; after the pipeline
`assert_untouched` compares the very objects the stage received with those copies.

This works because FnApiRunner runs its worker in the test's process: the DoFn is pickled, but
a module-level name is pickled by reference, so the worker appends to this module's list. The
stage is fused with `Kept` (no shuffle between them), so it gets the same objects; `seen_by`
proves it from the stage's outputs (their `original` is the object `Kept` recorded).
"""
import copy

import apache_beam as beam

_KEPT: dict = {}  # label -> [(event as the stage received it, deep copy taken before)]


class Kept(beam.PTransform):
    """Passes events through unchanged, keeping each one (and a deep copy) under `label`."""

    def __init__(self, label: str):
        super().__init__(label)
        self._label = label
        _KEPT[label] = []

    def expand(self, events):
        return events | beam.ParDo(_KeepFn(self._label))


class _KeepFn(beam.DoFn):
    def __init__(self, label: str):
        self._label = label

    def process(self, event):
        _KEPT[self._label].append((event, copy.deepcopy(event)))
        yield event


def seen_by(label: str):
    """A Map for the stage's output: True when the event's `original` is one the stage was given
    by `Kept` (the same object, not a copy), i.e. the check below looks at what the stage had."""
    return beam.Map(_was_kept, label)


def _was_kept(event, label: str) -> bool:
    # A module-level function, pickled by reference: a lambda would carry a pickled copy of _KEPT.
    return any(event.original is kept.original for kept, _ in _KEPT[label])


def assert_untouched(label: str, expected_count: int):
    """After the pipeline: every event kept under `label` still equals its copy from before."""
    kept = _KEPT[label]
    assert len(kept) == expected_count, f"{label}: kept {len(kept)} events, expected {expected_count} " \
                                        "(is the runner still in-process?)"
    for event, before in kept:
        assert event == before, f"{label}: the stage wrote into its input:\n{event}\nwas\n{before}"
