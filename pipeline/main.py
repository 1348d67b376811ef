"""Entry point: parse and check everything the user gave, build the graph, run, report.

`python -m pipeline` and the `sluice` console script both land in main().
"""
import hashlib
import logging
import os
import shutil
import sys
import threading
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pipeline import config as config_module
from pipeline import contracts as contracts_module
from pipeline import options as options_module
from pipeline import replay, runners, sources, streaming, summary as summary_module
from pipeline.config import Config
from pipeline.errors import UsageError
from pipeline.graph import build_warehouse_graph, warehouse_settings
from transforms import gcpause, metrics, parking
from transforms.destinations import model as destination_model
from transforms.rules import udf
from transforms.warehouse import duckdb_backend
from transforms.warehouse.sink import open_backend


class RunPlan(NamedTuple):
    """Everything checked before the graph is built."""
    source: beam.PTransform    # PBegin -> RawMessage: files or Pub/Sub
    streaming: bool
    config: Config
    warehouse_url: str
    backend: dict              # the BigQuery options: endpoint, location, write method
    summary_path: str
    dead_letter_topic: str = None
    runner: runners.Runner = runners.LOCAL_BATCH


def _source(sluice_options, pipeline_options, runner: runners.Runner) -> tuple:
    """(source transform, streaming) for the one input option given."""
    given = [name for name in ("input_files", "input_subscription", "input_topic") if getattr(sluice_options, name)]
    if len(given) != 1:
        raise UsageError("give exactly one input: --input_files PATTERN, --input_subscription "
                         "projects/P/subscriptions/S or --input_topic projects/P/topics/T"
                         + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    if given[0] == "input_files":
        return sources.ReadInputFiles(sources.check_input_files(sluice_options.input_files),
                                      redistribute=runner.distributed), \
            bool(pipeline_options.view_as(StandardOptions).streaming)
    subscription, topic = sources.check_pubsub(sluice_options.input_subscription, sluice_options.input_topic)
    return sources.ReadPubSubMessages(subscription, topic), True


def check(sluice_options, pipeline_options, replaying: bool = False) -> RunPlan:
    """Validate options and config; raise UsageError naming the first mistake. replaying: a
    replay run, a batch run whose source (dead letters) the caller sets on the plan."""
    if not replaying and (sluice_options.input_subscription or sluice_options.input_topic):
        pipeline_options.view_as(StandardOptions).streaming = True  # Pub/Sub is unbounded
    runner = runners.resolve(pipeline_options)
    source, streaming = (None, False) if replaying else _source(sluice_options, pipeline_options, runner)
    kind = options_module.parse_warehouse_url(sluice_options.warehouse)
    options_module.check_runner(pipeline_options, kind, runner.name)
    config = contracts_module.load(config_module.load(sluice_options.config), sluice_options.config)
    config = with_udf(config, sluice_options.udf)
    check_destinations(config)
    backend = {}
    if kind == "bigquery":
        method = sluice_options.bigquery_write_method
        if method == "auto":
            method = "insert_all" if streaming else "load"
        backend = {"bigquery_endpoint": options_module.check_endpoint(sluice_options.bigquery_endpoint),
                   "bigquery_location": sluice_options.bigquery_location, "bigquery_write_method": method}
    dead_letter_topic = sources.check_topic("dead_letter_topic", sluice_options.dead_letter_topic)
    check_pubsub_exists(sluice_options, replaying)
    return RunPlan(source, streaming, config, sluice_options.warehouse, backend, sluice_options.summary_path,
                   dead_letter_topic, runner)


def check_pubsub_exists(sluice_options, replaying: bool) -> None:
    """The Pub/Sub subscription and topics the run reads and publishes to exist, asked last (the
    options' forms and the config are checked first, without a network call)."""
    names = ("dead_letter_topic",) if replaying else ("input_subscription", "input_topic", "dead_letter_topic")
    for name in names:
        if getattr(sluice_options, name):
            sources.check_exists(name, getattr(sluice_options, name))


def check_destinations(config: Config) -> None:
    """Secrets resolve and webhook hosts resolve to addresses they may reach, at launch."""
    try:
        destination_model.check_reachable(config.destinations)
    except destination_model.DestinationError as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None


def with_udf(config: Config, spec) -> Config:
    """The --udf function checked here (importable, callable); workers import it in setup()."""
    if not spec:
        return config
    try:
        udf.load(spec)
    except udf.UdfError as exc:
        raise UsageError(f"--udf {exc}") from None
    return config._replace(transforms=config.transforms._replace(udf=spec))


def _progress_writer(path):
    """A streaming run rewrites its summary file as it goes (every couple of seconds)."""
    if not path:
        return None

    def write(_result):  # mid-run: events in flight between stages are not yet accounted for
        summary_module.write(path, summary_module.build(metrics.in_process_counts(), running=True))
    return write


def close_warehouses() -> None:
    """After a local streaming run stops: the parked clients, then every DuckDB file."""
    parking.close_all()
    duckdb_backend.close_all()


def run(argv: list):
    """Run a job (batch: to the end; streaming: until SIGINT/SIGTERM); return its summary (None
    for a flex template launch, see execute). Raises UsageError before building anything."""
    sluice_options, pipeline_options = options_module.parse_args(argv)
    return execute(check(sluice_options, pipeline_options), pipeline_options)


@contextmanager
def launch_backend(plan: RunPlan):
    """The warehouse, opened by the launcher and held for the whole run: an embedded DuckDB file
    is then this process's until the run ends (another process on it is refused, not
    interleaved), and one that another process holds, or that is no DuckDB database, is a usage
    error before anything runs."""
    try:
        backend = open_backend(warehouse_settings(plan.warehouse_url, plan.config, **plan.backend))
    except duckdb_backend.WarehouseUnusable as exc:
        raise UsageError(f"--warehouse {plan.warehouse_url}: {exc}") from None
    try:
        yield backend
    finally:
        backend.close()


def execute(plan: RunPlan, pipeline_options):
    """The run's summary; None when the runner only wrote the job (a flex template launch)."""
    return run_built(plan, build(plan, pipeline_options))


def build(plan: RunPlan, pipeline_options) -> beam.Pipeline:
    """The job's graph, not run yet (run_built runs it; a batch graph may be run again)."""
    try:
        pipeline = beam.Pipeline(runner=plan.runner.runner, options=pipeline_options)
    except ValueError as exc:  # Beam checks the options for the runner here: a usage error, before anything runs
        if not str(exc).startswith("Pipeline has validations errors"):
            raise
        problems = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
        raise UsageError(f"Beam's options for --runner {plan.runner.name}: {'; '.join(problems)}") from None
    build_warehouse_graph(pipeline, plan.source, plan.config, plan.warehouse_url,
                          trust_event_received_at=not plan.streaming, streaming=plan.streaming, runner=plan.runner,
                          dead_letter_topic=plan.dead_letter_topic, **plan.backend)
    return pipeline


def run_built(plan: RunPlan, pipeline: beam.Pipeline):
    """Run the graph `build` made for `plan`; its summary (None: see execute)."""
    with launch_backend(plan) as backend:
        # At launch (also for a flex template launch, which runs nothing here): the dead-letter
        # table (and BigQuery's view of it) exists from the first run, before anything has failed;
        # so does `_deliveries` when the run forwards (DuckDB makes it with the file anyway).
        backend.ensure_dead_letters()
        if plan.config.destinations:
            backend.ensure_deliveries()
        if plan.streaming and plan.runner.in_process:
            metrics.count_in_process()
            try:
                streaming.run_until_stopped(pipeline, plan.config.max_buffering_seconds + 1,
                                            close=close_warehouses, on_tick=_progress_writer(plan.summary_path))
            except streaming.RunFailed:
                if plan.summary_path:  # what the run did before it failed, for whoever looks
                    summary_module.write(plan.summary_path, summary_module.build(metrics.in_process_counts()))
                raise
            counters = metrics.in_process_counts()
        else:
            with gcpause.relaxed() if plan.runner.in_process else nullcontext():
                result = pipeline.run()
                if not getattr(result, "has_job", True):
                    # --template_location (the flex template launcher): the runner wrote the job for the
                    # launcher to start and submitted nothing, so there is nothing to wait for or count.
                    return None
                result.wait_until_finish()
            counters = summary_module.counters_from_result(result)
    summary = summary_module.build(counters)
    if plan.summary_path:
        summary_module.write(plan.summary_path, summary)
    return summary


class FileLoads:
    """The embedded collector's loads (`serve --warehouse duckdb:///PATH`): the batch job over
    files it is given, again and again in one process. Options and config are checked once, at
    start, so every load runs with what the collector was started with; the warehouse is held
    open (DuckDB's lock on the file) from start to close(), so no other process writes it
    meanwhile and each run reuses the open connection and its cached schemas. argv: the batch
    job's options without an input (--config, --warehouse, --udf, Beam's).

    The graph is built once and run for every load: building it costs more than running it on
    a few seconds of events (measured: 0.4-1.0 s of Beam's type inference and option parsing,
    against 0.2-0.4 s for a run of one event). Its source reads `staging/*.jsonl`, so each load
    links its files there (hard links: the spool keeps the files until the caller moves them),
    runs, and empties it; a file's lines are read from `staging/<its name>` on every attempt."""

    def __init__(self, argv: list, staging: str = None):
        sluice_options, self.pipeline_options = options_module.parse_args(argv)
        if sluice_options.input_files or sluice_options.input_subscription or sluice_options.input_topic:
            raise UsageError("the embedded loader reads the collector's spool: give no --input_* option")
        if options_module.parse_warehouse_url(sluice_options.warehouse) != "duckdb":
            raise UsageError(f"--warehouse {sluice_options.warehouse}: embedded mode loads a DuckDB file "
                             "(duckdb:///PATH); to send to BigQuery, use --sink and a pipeline job")
        if self.pipeline_options.view_as(StandardOptions).streaming:
            raise UsageError("the embedded loader runs batch jobs over closed spool files: leave out --streaming")
        # replaying=True: a run whose source the caller sets (here: the files of each load)
        plan = check(sluice_options, self.pipeline_options, replaying=True)._replace(summary_path=None)
        self.path = plan.warehouse_url[len("duckdb:///"):]
        self.staging = os.path.abspath(staging or os.path.join(self.path + ".spool", ".loading"))
        self.plan = plan._replace(source=sources.ReadInputFiles([os.path.join(self.staging, "*.jsonl")]))
        self.settings = warehouse_settings(self.plan.warehouse_url, self.plan.config, **self.plan.backend)
        self.limits = self.plan.config.decode
        self._pipeline = None
        self._lock = threading.Lock()
        try:
            self._held = open_backend(self.settings)
        except duckdb_backend.WarehouseUnusable as exc:
            raise UsageError(f"--warehouse {self.plan.warehouse_url}: {exc}") from None
        os.makedirs(self.staging, exist_ok=True)
        self._empty_staging()  # what a killed predecessor linked: the spool still has the files

    def __call__(self, files: list) -> dict:
        """One batch run over exactly these files; its summary. Raises what the run raises."""
        with self._lock:
            if self._pipeline is None or self._pipeline.runner is not self.plan.runner.runner:
                self._pipeline = build(self.plan, self.pipeline_options)
            self._empty_staging()
            try:
                for path in files:
                    self._stage(path)
                return run_built(self.plan, self._pipeline)
            finally:
                self._empty_staging()

    def _stage(self, path: str) -> None:
        name = os.path.basename(path)
        if os.path.exists(os.path.join(self.staging, name)):  # two files of one name: tell them apart
            name = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12] + "-" + name
        target = os.path.join(self.staging, name if name.endswith(".jsonl") else name + ".jsonl")
        try:
            os.link(path, target)
        except OSError:  # another file system: a copy, with its modification time (received_at)
            shutil.copy2(path, target)

    def _empty_staging(self) -> None:
        for entry in os.scandir(self.staging):
            if entry.is_file():
                os.unlink(entry.path)

    def cursor(self):
        """A DuckDB connection of its own to the held warehouse, for reads while loads run."""
        return self._held.cursor()

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


def run_replay(argv: list) -> dict:
    """`replay`: the dead letters a selection names, through the pipeline again; on success
    they are recorded as replayed. The summary gains `replayed` (how many were recorded) and
    `failed_again` (of them, how many made new dead letters: one each, however many it made)."""
    selection, files, dry_run, rest = replay.parse_replay_args(argv)
    run_id, started_at = replay.new_run()
    selection = selection._replace(before=started_at)
    sluice_options, pipeline_options = options_module.parse_args(rest)
    if files:
        sources.check_input_files(files, "dead_letter_files")
    plan = check(sluice_options, pipeline_options, replaying=True)
    settings = warehouse_settings(plan.warehouse_url, plan.config, **plan.backend)
    if dry_run:
        return {"dry_run": replay.describe(replay.selected(settings, selection, files, read_only=True))}
    plan = plan._replace(source=replay.ReadDeadLetters(settings, selection, run_id, files))
    # The lease, from before the workers select until what they replayed is recorded: another
    # replay started meanwhile would select the same dead letters (it exits 2 naming this one).
    with replay.leased(settings, selection, run_id, files):
        # Files are read here first (the workers read them again): a line that is no dead-letter
        # record is then one line naming it, exit 2, before anything runs. The ids do not change
        # while the lease is held (_replays is written below), so they are those the run replayed.
        ids = [r["dead_letter_id"] for r in replay.selected(settings, selection, files)] if files else None
        summary = execute(plan, pipeline_options)
        if summary is None:
            raise UsageError("replay records what it replayed once its job has finished: "
                             "run it directly, not as a template (--template_location)")
        if ids is None:
            ids = [r["dead_letter_id"] for r in replay.selected(settings, selection)]
        replay.record(settings, ids, run_id)
        summary["failed_again"] = replay.failed_again(settings, ids, started_at)
    summary["replayed"] = len(ids)
    return summary


def main(argv=None) -> int:
    code = _main(argv)
    if streaming.stopped_local_run.is_set():
        streaming.exit_now(code)
    return code


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":   # the collection API: options, errors and exit codes of its own
        from pipeline import serve
        return serve.main(argv[1:])
    replaying = bool(argv) and argv[0] == "replay"
    if "--help" in argv or "-h" in argv:
        print(replay.__doc__ if replaying else options_module.help_text())
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run_replay(argv[1:]) if replaying else run(argv)
    except UsageError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    except duckdb_backend.WarehouseUnusable as exc:  # opened before the launcher's check (replay's reads)
        print(f"sluice: error: --warehouse: {exc}", file=sys.stderr)
        return 2
    except streaming.RunFailed as exc:
        print(f"sluice: error: the run failed and stopped: {exc}", file=sys.stderr)
        return 3
    if summary is None:
        print("sluice: job written for the flex template launcher; its counters are in the Dataflow console")
        return 0
    if "dry_run" in summary:
        print(summary["dry_run"])
        return 0
    print(summary_module.format_table(summary))
    if replaying:
        print(replay.outcome(summary))
    if not summary["conservation"]["holds"]:
        print("sluice: error: conservation check failed; see the summary above", file=sys.stderr)
        return 1
    return 0
