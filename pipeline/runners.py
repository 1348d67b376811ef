"""Which runner a job runs on, and what the graph must know about it.

The graph differs by what the runner does, not by whether `--runner` was typed: Beam's local
runners fire no processing-time timers (FnApiRunner fires them at once or fails the run; the
local streaming runner never fires them) and the local streaming runner sets every DoFn up and
tears it down around each bundle. So `--runner DirectRunner --streaming` gets the same graph as
no --runner at all, and Dataflow gets the timers. `--runner` names are checked here, before
anything is built: a misspelt one is a usage error, not a traceback.
"""
import importlib
from typing import NamedTuple

from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineRunner, create_runner

from pipeline.errors import UsageError, did_you_mean, first_line

# The names that mean "Beam's local runner": ours picks FnApiRunner for batch and the
# BundleBasedDirectRunner for streaming, as Beam's DirectRunner does once it has given up on
# downloading the Prism runner (a lookup that leaves the machine, and wasted seconds).
_LOCAL_NAMES = {"directrunner", "direct", "switchingdirectrunner"}


class Runner(NamedTuple):
    runner: object            # the PipelineRunner for beam.Pipeline
    name: str
    in_process: bool          # runs in this process: a local streaming run counts in-process
    timers: bool              # processing-time timers fire: batches can wait and retry on them
    reuses_dofns: bool        # a DoFn instance serves many bundles (else clients are parked between them)
    distributed: bool         # work is spread over machines: redistributing a file's lines pays


LOCAL_BATCH = Runner(None, "FnApiRunner", True, False, True, False)


def resolve(options) -> Runner:
    """The runner for these options; UsageError for a runner name Beam does not know, or one
    that cannot run this kind of job."""
    standard = options.view_as(StandardOptions)
    given, streaming = standard.runner, bool(standard.streaming)
    name = given if isinstance(given, str) else type(given).__name__ if given is not None else "DirectRunner"
    key = name.lower()
    if key in _LOCAL_NAMES:
        key = "bundlebaseddirectrunner" if streaming else "fnapirunner"
    if key == "fnapirunner":
        if streaming:
            raise UsageError("--runner FnApiRunner cannot run a streaming job; leave --runner out (or use "
                             "DirectRunner) to run it locally")
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return LOCAL_BATCH._replace(runner=FnApiRunner())
    if key == "bundlebaseddirectrunner":
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
        return Runner(BundleBasedDirectRunner(), "BundleBasedDirectRunner", True, False, False, False)
    return _traits(given if not isinstance(given, str) else _create(given), streaming)


def _create(name: str) -> PipelineRunner:
    """The runner a --runner name means: one of Beam's names (any case, `Runner` optional) or
    module.Class. Beam's create_runner would instantiate whatever class a dotted name names and
    let an AttributeError through, so a dotted name is imported and checked here."""
    if "." not in name:
        try:
            return create_runner(name)
        except ValueError:
            known = StandardOptions.KNOWN_RUNNER_NAMES
            raise UsageError(f"--runner {name}: unknown runner" + (
                did_you_mean(name, known) or f"; Beam's are {', '.join(known)}, or module.Class of a "
                                             "PipelineRunner subclass")) from None
        except ImportError as exc:  # a runner of an extra not installed (apache_beam[interactive])
            raise UsageError(f"--runner {name}: {first_line(exc)}") from None
    if not all(part.isidentifier() for part in name.split(".")):  # import_module("") is a ValueError
        raise UsageError(f"--runner {name}: expected a runner name (DirectRunner, DataflowRunner, ...) or "
                         "module.Class of a PipelineRunner subclass")
    module, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--runner {name}: cannot import it ({first_line(exc)})") from None
    if not (isinstance(cls, type) and issubclass(cls, PipelineRunner)):
        raise UsageError(f"--runner {name}: not a PipelineRunner subclass")
    return cls()


def _traits(runner, streaming: bool) -> Runner:
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    cls = type(runner).__name__
    if isinstance(runner, BundleBasedDirectRunner) or (isinstance(runner, SwitchingDirectRunner) and streaming):
        return Runner(runner, cls, True, False, False, False)
    if isinstance(runner, (FnApiRunner, SwitchingDirectRunner)):
        return LOCAL_BATCH._replace(runner=runner, name=cls)
    # Dataflow and the portable runners (Prism, Flink, Spark) fire processing-time timers;
    # all but Prism (one local process) spread the work over machines.
    return Runner(runner, cls, False, True, True, cls != "PrismRunner")
