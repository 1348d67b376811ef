"""`python -m pipeline experiments`: the experiment analysis, run inside the warehouse.

    python -m pipeline experiments --warehouse URL --config FILE [--experiment KEY] [--json]
        [--html PATH] [--bigquery_endpoint URL]

--warehouse URL          where the pipeline wrote the events: duckdb:///PATH (an existing file) or
                         bigquery://PROJECT/DATASET. Its experiment_exposures table and the metrics'
                         event tables are read there; the results are appended to its table
                         experiment_results (one row per experiment, metric and variation).
--config FILE            the pipeline's config file: its `experiments:` section (unit, definitions,
                         metrics, cuped) says what to compute
--experiment KEY         only this experiment (an experiment_id of the exposures); default: every
                         experiment with exposures
--json                   print one JSON document {analyzed_at, experiments, results, warnings}
                         instead of the table
--html PATH              also write a self-contained HTML report there (a chart per metric)
--bigquery_endpoint URL  send BigQuery API calls here, e.g. a local emulator (http://127.0.0.1:9050)

The terminal table gives, per experiment, its warnings (a sample-ratio mismatch: p below 0.001
against the configured weights; units that saw more than one variation, left out), its units per
variation, then per metric each variation's units, mean, relative lift against control with its
95% interval, p-value and chance to win. docs/experiments.md#running-the-analysis has the rules
(windows, exclusions, the control and variation order). Exit status 2: a mistake in the options
or the config, a warehouse that cannot be read (not a DuckDB file, no Google credentials, BigQuery
refusing a request) or without exposures yet, named on one line.
"""
import argparse
import sys
from pathlib import Path

from pipeline import config_file
from pipeline.errors import OneLineParser, UsageError
from pipeline.warehouse_url import check_endpoint, parse_warehouse_url

# Not pipeline.config: it imports the stages and so Apache Beam (about 1 s); the analysis needs
# only the experiments section, read and typed here as pipeline.config types it.


def parse_args(argv: list) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m pipeline experiments", add_help=False, allow_abbrev=False)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--experiment")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--html")
    parser.add_argument("--bigquery_endpoint")
    args, rest = parser.parse_known_args(argv)
    if rest:
        raise UsageError(f"unrecognized option {rest[0]} (see python -m pipeline experiments --help)"
                         if rest[0].startswith("-") else f"unexpected argument {rest[0]!r}")
    parse_warehouse_url(args.warehouse)
    args.bigquery_endpoint = check_endpoint(args.bigquery_endpoint)
    if args.experiment is not None and not args.experiment:
        raise UsageError("--experiment: an experiment id, as the exposures record it")
    if args.html is not None and not Path(args.html).parent.is_dir():
        raise UsageError(f"--html {args.html}: no directory {Path(args.html).parent} to write the report in")
    return args


def settings_of(path: str):
    """The config's experiments section, typed (defaults when absent)."""
    from transforms.experiments import settings
    document = config_file.read(path) or {}
    config_file.check_schema(document)
    try:
        return settings.parse(document.get("experiments"))
    except settings.SettingsError as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None


def run(args: argparse.Namespace):
    """The analysis, its rows appended to experiment_results; (Analysis, settings)."""
    settings = settings_of(args.config)
    from analysis import analyze, results, warehouse as warehouses  # scipy's import: most of a second
    from analysis.errors import AnalysisError
    try:
        analyze.check_settings(settings)
        warehouse = warehouses.open_warehouse(args.warehouse, args.bigquery_endpoint)
        try:
            analysis = analyze.analyze(warehouse, settings, args.experiment)
            results.write_results(warehouse, analysis.results)
        finally:
            warehouse.close()
    except AnalysisError as exc:  # a key path of the config file reads as pipeline.config's do
        raise UsageError(f"config: {exc}" if exc.where.startswith("experiments") else str(exc)) from None
    return analysis, settings


def main(argv: list) -> int:
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip())
        return 0
    try:
        args = parse_args(argv)
        analysis, settings = run(args)
        if args.html is not None:
            from analysis import report
            try:
                Path(args.html).write_text(report.render(analysis.results, analysis.warnings), encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--html {args.html}: {exc.strerror}") from None
    except UsageError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    from analysis import text
    print(text.to_json(analysis) if args.json else text.format_table(analysis, settings.metrics))
    return 0
