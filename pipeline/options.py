"""Command-line options: Sluice's own, plus Beam's standard options passed through.

`parse_args` reads argv into (SluiceOptions, PipelineOptions) and refuses, with one line
naming it, any option neither Sluice nor Beam knows: Beam alone would only log a warning
and drop a mistyped `--input_file`, leaving the run to fail later and further from the cause.
"""
import argparse

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from pipeline.errors import OneLineParser, UsageError, did_you_mean
# Beam-free, shared with pipeline.query and pipeline.experiments; still this module's names too.
from pipeline.warehouse_url import _BIGQUERY_URL, check_endpoint, parse_warehouse_url  # noqa: F401

DEFAULT_WAREHOUSE = "duckdb:///sluice.duckdb"


class SluiceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("input")
        group.add_argument("--input_files", metavar="PATTERN",
                           help="Newline-delimited JSON to read: a local path or gs:// URL, a glob, "
                                "or a comma-separated list of them. `.gz` files are decompressed. "
                                "Each line is one Segment event or a batch envelope {\"batch\": [...]}.")
        group.add_argument("--input_subscription", metavar="projects/P/subscriptions/S",
                           help="Read Segment events (or batch envelopes) from this Pub/Sub subscription; "
                                "runs as a streaming job until stopped (Ctrl-C or SIGTERM locally).")
        group.add_argument("--input_topic", metavar="projects/P/topics/T",
                           help="Read from this Pub/Sub topic through a temporary subscription (as Beam does); "
                                "streaming, like --input_subscription.")
        group = parser.add_argument_group("configuration")
        group.add_argument("--config", metavar="PATH",
                           help="YAML config file (local or gs://), validated against "
                                "schemas/config.schema.json before the pipeline starts. Without it, defaults apply.")
        group.add_argument("--udf", metavar="MODULE:FUNCTION",
                           help="A Python function applied to each event after the config's transformation rules: "
                                "it takes the event (a dict) and returns the event to keep or None to drop it "
                                "(counted as the `udf` drop). An exception is a dead letter `transform_failed`. "
                                "The module must be importable where the pipeline runs.")
        group = parser.add_argument_group("warehouse")
        group.add_argument("--warehouse", metavar="URL", default=DEFAULT_WAREHOUSE,
                           help="Where tables are written. duckdb:///relative/path.duckdb or "
                                "duckdb:////absolute/path.duckdb (embedded; the default is %(default)s "
                                "in the working directory), or bigquery://PROJECT/DATASET (the dataset is created "
                                "when missing). The dead-letter table _dead_letters lives there too.")
        group.add_argument("--bigquery_endpoint", metavar="URL",
                           help="Send BigQuery API calls here instead of Google's API, e.g. a local emulator "
                                "(http://127.0.0.1:9050); no Google credentials are used then.")
        group.add_argument("--bigquery_write_method", choices=("auto", "insert_all", "load"), default="auto",
                           help="How rows reach BigQuery: insert_all (streaming inserts, deduplicated by "
                                "message_id for about a minute) or load (free, atomic load jobs; message_ids "
                                "already stored are skipped). auto: load for batch runs, insert_all with --streaming.")
        group.add_argument("--bigquery_location", metavar="LOCATION", default="US",
                           help="Where a missing BigQuery dataset is created (default %(default)s), e.g. EU, "
                                "europe-west1.")
        group = parser.add_argument_group("dead letters")
        group.add_argument("--dead_letter_topic", metavar="projects/P/topics/T",
                           help="Also publish every dead letter to this Pub/Sub topic (they still go to the "
                                "warehouse's _dead_letters table): the original payload as the message data, the "
                                "error fields (error_stage, error_type, error_message, source, ...) as attributes, "
                                "error_details and the original attributes as JSON attributes.")
        group = parser.add_argument_group("reporting")
        group.add_argument("--summary_path", metavar="PATH",
                           help="Write the batch run's reconciliation summary here as JSON (local or gs://). "
                                "The summary is printed as a table at the end of a batch run either way.")


def _beam_parser() -> argparse.ArgumentParser:
    """Every option Beam and Sluice know, the way Beam assembles them."""
    parser = OneLineParser(allow_abbrev=False, add_help=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    return parser


def help_text() -> str:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Sluice: Segment-compatible events in, warehouse tables and dead letters out.",
        epilog="Standard Beam options pass through: --runner, --project, --region, --temp_location, "
               "--streaming, --direct_num_workers, ... Without --runner, batch runs use Beam's in-process "
               "FnApiRunner. Exit status 2 means a command-line or config mistake, named on one line; 1, a "
               "conservation failure (a bug); 3, a streaming run stopped by an error of its own. "
               "`python -m pipeline replay --help`: send dead letters through the pipeline again. "
               "`python -m pipeline experiments --help`: analyze experiments in the warehouse.")
    SluiceOptions._add_argparse_args(parser)
    return parser.format_help()


def parse_args(argv: list) -> tuple:
    """argv -> (SluiceOptions, PipelineOptions). Raises UsageError for unknown or malformed options."""
    parser = _beam_parser()
    _, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if name.startswith("-"):
            raise UsageError(f"unrecognized option {name}{did_you_mean(name, parser.option_names())} (see --help)")
        raise UsageError(f"unexpected argument {arg!r} (options take the form --name=value)")
    options = PipelineOptions(argv)
    # Beam takes any int and fails deep in the runner (an IndexError for a negative one); 0 means
    # one worker per core, Beam's own default.
    workers = options.view_as(DirectOptions).direct_num_workers
    if workers < 0:
        raise UsageError(f"--direct_num_workers {workers}: a number of workers, 0 or more (0: one per core)")
    return options.view_as(SluiceOptions), options


def check_runner(options: PipelineOptions, warehouse_kind: str, runner_name: str) -> None:
    """DuckDB is embedded in this process: refuse runners that would write from elsewhere
    (runner_name: the runner that will run, see pipeline.runners)."""
    if warehouse_kind != "duckdb":
        return
    if runner_name not in ("FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"):
        raise UsageError(f"--runner {runner_name} cannot write to an embedded DuckDB file; "
                         "use a local runner or another --warehouse")
    if options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        raise UsageError("--direct_running_mode=multi_processing cannot share one DuckDB file between "
                         "processes; use in_memory or multi_threading")
