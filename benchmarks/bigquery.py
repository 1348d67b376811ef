"""Throughput into the local BigQuery emulator, and API calls per 10,000 rows, for both
write paths, against DuckDB in the same run.

    python benchmarks/bigquery.py [--events 20000]

Starts the emulator (installed by `make emulators`) on 127.0.0.1, generates N events with
the sample mix (no bad records), and runs the whole batch pipeline on one FnApiRunner
worker three times: into DuckDB (the baseline), into BigQuery with load jobs, and into
BigQuery with insertAll. Prints events/s, rows/s, the ratio to DuckDB, and the API calls
each path made per 10,000 rows written. The emulator runs on DuckDB itself, so its speed
says little about Google's; the call counts carry over.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pipeline  # noqa: E402,F401 - before Beam: it silences Beam's apitools notice
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

os.environ.setdefault("NO_GCE_CHECK", "true")
from throughput import write_input  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.graph import build_warehouse_graph  # noqa: E402
from pipeline.sources import ReadInputFiles  # noqa: E402
from tests.integration.emulators import BigQueryEmulator  # noqa: E402


def run(path: str, warehouse: str, **backend) -> tuple:
    start = time.perf_counter()
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build_warehouse_graph(p, ReadInputFiles([path]), Config(), warehouse, **backend)
    result = p.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - start
    report = summary.build(summary.counters_from_result(result))
    if not report["conservation"]["holds"] or report["dead_lettered"]:
        raise SystemExit(f"{warehouse}: not every event was stored: {report}")
    return elapsed, report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        messages, events = write_input(path, args.events)
        print(f"input: {events:,} events in {messages:,} messages")
        elapsed, report = run(path, f"duckdb:///{tmp}/bench.duckdb")
        baseline = events / elapsed
        rows = sum(report["tables"].values())
        print(f"{'duckdb (baseline)':<22}{elapsed:7.2f} s {baseline:9,.0f} events/s {rows / elapsed:9,.0f} rows/s")
        with BigQueryEmulator(Path(tmp) / "bq") as emulator:
            for method in ("load", "insert_all"):
                elapsed, report = run(path, f"bigquery://{emulator.project}/bench_{method}",
                                      bigquery_endpoint=emulator.endpoint, bigquery_write_method=method)
                rows = sum(report["tables"].values())
                calls = report["api_calls"]
                per = ", ".join(f"{kind} {count * 10_000 / rows:.1f}" for kind, count in sorted(calls.items()))
                print(f"{'bigquery ' + method:<22}{elapsed:7.2f} s {events / elapsed:9,.0f} events/s "
                      f"{rows / elapsed:9,.0f} rows/s  ratio {events / elapsed / baseline:.2f}")
                print(f"{'':<22}API calls per 10,000 rows: {sum(calls.values()) * 10_000 / rows:.1f} ({per})")


if __name__ == "__main__":
    main()
