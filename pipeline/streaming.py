"""Running a streaming job locally until Ctrl-C (SIGINT) or SIGTERM, and stopping it cleanly.

Beam's local streaming runner (BundleBasedDirectRunner) runs the pipeline on background
threads and can only be cancelled. A stop therefore waits for the warehouse's buffered
batches to be flushed (their buffering time has passed for everything already read), then
cancels the runner and closes the warehouse connections, so a DuckDB file is checkpointed
and complete on its own. The local runner acks Pub/Sub messages when it pulls them
(at-most-once): messages pulled in the last moments before a stop can be lost, which is why
production streaming runs on Dataflow, which acks after a checkpoint.
"""
import logging
import signal
import threading
import time

from apache_beam.runners.runner import PipelineState

_LOG = logging.getLogger(__name__)


class StopRequested:
    """A flag set by SIGINT or SIGTERM; the previous handlers come back on restore()."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def install(self) -> "StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        _LOG.warning("stopping: %s received; flushing buffered batches", signal.Signals(signum).name)
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_until_stopped(pipeline, flush_seconds: float, stop: StopRequested = None, close=lambda: None):
    """Run `pipeline` (streaming) until `stop` is set; then flush, cancel and `close()`.
    Returns the PipelineResult (its metrics are the run's counters)."""
    stop = stop or StopRequested().install()
    result = pipeline.run()
    try:
        while not stop.event.wait(0.2):
            if PipelineState.is_terminal(result.state):
                break
        time.sleep(flush_seconds)  # batches buffered before the stop reach their flush time
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
        close()
        stop.restore()
    return result
