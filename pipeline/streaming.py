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
import os
import signal
import sys
import threading
import time

from apache_beam.runners.runner import PipelineState

from pipeline.errors import first_line

_LOG = logging.getLogger(__name__)
# Set once a local streaming run has stopped: the runner's Pub/Sub pull can block a
# non-daemon thread for up to 30 s, so the entry point exits without waiting for it.
stopped_local_run = threading.Event()


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


class RunFailed(Exception):
    """A local streaming run ended by an error of its own, not by a stop (its subscription
    deleted, say); __cause__ is what the runner raised."""


def run_until_stopped(pipeline, flush_seconds: float, stop: StopRequested = None, close=lambda: None,
                      on_tick=None, tick_seconds: float = 2.0):
    """Run `pipeline` (streaming) until `stop` is set; then flush, cancel and `close()`.
    `on_tick(result)` runs every `tick_seconds` meanwhile (the summary file is rewritten so a
    person, or a test, can watch a run). Returns the PipelineResult; raises RunFailed, once
    closed, when a step failed for good before the stop."""
    stop = stop or StopRequested().install()
    result = pipeline.run()
    failure = _watch(result)
    try:
        next_tick = time.monotonic() + tick_seconds
        while not stop.event.wait(0.2):
            if PipelineState.is_terminal(result.state) or failure:
                break
            if on_tick is not None and time.monotonic() >= next_tick:
                on_tick(result)
                next_tick = time.monotonic() + tick_seconds
        failed = list(failure)  # what failed after the stop is the stop's doing, not the run's
        if not failed:
            time.sleep(flush_seconds)  # batches buffered before the stop reach their flush time
    finally:
        _cancel(result, wait=flush_seconds)
        close()  # waits for a write in progress (the DuckDB lock), then checkpoints the file
        stop.restore()
        stopped_local_run.set()
    if failed:
        raise RunFailed(first_line(failed[0])) from failed[0]
    return result


def _watch(result) -> list:
    """A list that gets the runner's exception when a step fails for good. The local runner
    retries a failing bundle, then gives up on the job but keeps its state RUNNING and goes on
    idling (only wait_until_finish, which blocks, raises the failure), so a daemon thread waits
    on it. Without this a run whose subscription was deleted idled on to an all-zero summary."""
    failure = []

    def wait():
        try:
            result.wait_until_finish()
        except Exception as exc:  # noqa: BLE001 - whatever a step raised ended the job: reported by the caller
            failure.append(exc)
    threading.Thread(target=wait, name="sluice-watch-run", daemon=True).start()
    return failure


def _cancel(result, wait: float) -> None:
    """Cancel the runner without waiting on its Pub/Sub pull: cancel() stops new bundles at
    once but then joins a worker that may sit in a pull for 20-30 s. A bundle still running
    after `wait` seconds was pulled (and acked) after the stop: the at-most-once local case."""
    if PipelineState.is_terminal(result.state):
        return
    canceller = threading.Thread(target=result.cancel, name="sluice-cancel", daemon=True)
    canceller.start()
    canceller.join(wait)
    if canceller.is_alive():
        _LOG.info("the local runner is still finishing a pull; not waiting for it")


def exit_now(code: int) -> None:
    """End the process at once (after a local streaming run: see stopped_local_run). Output
    is flushed and the warehouse files are already closed; only the runner's idle threads
    are left behind."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
