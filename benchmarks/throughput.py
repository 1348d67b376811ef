"""Throughput of the batch pipeline against a baseline, in one run.

    python benchmarks/throughput.py [--events 200000]

Generates N events with the sample mix (all six types, batch envelopes, nested context,
arrays, unicode), then times, on one FnApiRunner worker reading the same file:
  baseline: the same file source, each line parsed and serialized again, nothing else;
  sluice:   the whole pipeline into a fresh DuckDB file.
Prints events/s for both and the ratio sluice/baseline.

Contracts: the same front half is run again with the sample contracts
(samples/contracts, every policy `allow`) and the difference is the Contracts stage's cost
per event; the enforcer alone is also timed over the normalized events, outside Beam.

Two reference points, measured in the same run, say where a faster Sluice could come from:
  front half:    read, decode and normalize, with the warehouse sink replaced by a no-op;
  storage floor: DuckDB alone writing the rows Sluice wrote (same tables, keys, batch
                 size and one commit per batch), from ready-made Arrow tables.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))

from generate import generate  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline import contracts as contracts_module  # noqa: E402
from pipeline.config import Config, validate  # noqa: E402
from transforms.contracts.enforce import ContractEnforcer  # noqa: E402
from transforms.decode import DecodeLimits, decode_message  # noqa: E402
from transforms.messages import RawMessage  # noqa: E402
from transforms.normalize import normalize_event  # noqa: E402
from pipeline.graph import build_graph, build_warehouse_graph  # noqa: E402
from pipeline.sources import ReadInputFiles  # noqa: E402


def write_input(path: str, events: int) -> tuple:
    messages = produced = 0
    with open(path, "wb") as handle:
        for line in generate(10 ** 9, bad_rate=0.0):
            handle.write(line + b"\n")
            messages += 1
            produced += len(orjson.loads(line).get("batch", [None]))
            if produced >= events:
                return messages, produced
    return messages, produced


def parse_and_serialize(message):
    return orjson.dumps(orjson.loads(message.data))


def run_baseline(path: str) -> float:
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        _ = p | "Read" >> ReadInputFiles([path]) | "ParseSerialize" >> beam.Map(parse_and_serialize)
    return time.perf_counter() - start


class Discard(beam.PTransform):
    """A sink that writes nothing and fails nothing."""

    def expand(self, pcoll):
        return pcoll | beam.Filter(lambda _: False)


def run_front_half(path: str, config: Config) -> float:
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        build_graph(p, ReadInputFiles([path]), config, event_sink=Discard(), dead_letter_sink=Discard())
    return time.perf_counter() - start


def storage_floor(source_db: str, target_db: str, batches: int) -> float:
    """Seconds DuckDB alone takes to write Sluice's finished rows again, in as many
    transactions as Sluice used, each holding its share of every table."""
    import duckdb
    with duckdb.connect(source_db, read_only=True) as source:
        ddl = dict(source.execute("SELECT table_name, sql FROM duckdb_tables() "
                                  "WHERE NOT starts_with(table_name, '_')").fetchall())
        data = {t: source.sql(f'SELECT * FROM "{t}"').to_arrow_table() for t in ddl}
    with duckdb.connect(target_db) as target:
        for statement in ddl.values():
            target.execute(statement)
        start = time.perf_counter()
        for batch in range(batches):
            target.execute("BEGIN TRANSACTION")
            for table, arrow in data.items():
                share = -(-arrow.num_rows // batches)
                chunk = arrow.slice(batch * share, share)  # noqa: F841 - read by name below
                if chunk.num_rows:
                    target.execute(f'INSERT INTO "{table}" SELECT * FROM chunk')
            target.execute("COMMIT")
        return time.perf_counter() - start


def contracts_config(unplanned="allow") -> Config:
    section = {"directory": str(ROOT / "samples" / "contracts"), "unplanned": unplanned, "violations": "allow"}
    return contracts_module.load(validate({"contracts": section}))


def time_enforcer(path: str, config: Config) -> tuple:
    """(seconds, events): ContractEnforcer.check alone over the file's normalized events."""
    bodies = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            for event in decode_message(RawMessage(line.rstrip(b"\n"), {}, "bench", None, str(number)),
                                        "2026-11-02T09:00:00.000000Z", DecodeLimits()):
                bodies.append(normalize_event(event.body, event.received_at, True, event.original))
    enforcer = ContractEnforcer(config.contracts)
    start = time.perf_counter()
    for body in bodies:
        enforcer.check(body)
    return time.perf_counter() - start, len(bodies)


def run_sluice(path: str, warehouse: str, config: Config) -> tuple:
    start = time.perf_counter()
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build_warehouse_graph(p, ReadInputFiles([path]), config, warehouse)
    result = p.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - start
    return elapsed, summary.build(summary.counters_from_result(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        messages, events = write_input(path, args.events)
        size_mb = os.path.getsize(path) / 1e6
        print(f"input: {events:,} events in {messages:,} messages, {size_mb:.1f} MB")
        baseline = run_baseline(path)
        elapsed, result = run_sluice(path, f"duckdb:///{tmp}/bench.duckdb", Config())
        if result["events"] != events or not result["conservation"]["holds"]:
            raise SystemExit(f"sluice did not account for every event: {result}")
        base_rate, sluice_rate = events / baseline, events / elapsed
        print(f"baseline (read + parse + serialize): {baseline:7.2f} s  {base_rate:10,.0f} events/s")
        print(f"sluice (whole pipeline into DuckDB): {elapsed:7.2f} s  {sluice_rate:10,.0f} events/s")
        print(f"ratio sluice/baseline: {sluice_rate / base_rate:.2f}  "
              f"(stored {result['stored']:,}, rows {sum(result['tables'].values()):,})")
        front = events / run_front_half(path, Config())
        floor = events / storage_floor(f"{tmp}/bench.duckdb", f"{tmp}/floor.duckdb", -(-events // Config().batch_size))
        print("reference points:")
        print(f"  front half (read + decode + normalize, no writes): {front:10,.0f} events/s  "
              f"ratio {front / base_rate:.2f}")
        print(f"  storage floor (DuckDB writing the same rows only): {floor:10,.0f} events/s  "
              f"ratio {floor / base_rate:.2f}")
        bound = 1 / (1 / front + 1 / floor)
        print(f"  both, with zero cost for layout and planning:      {bound:10,.0f} events/s  "
              f"ratio {bound / base_rate:.2f}")
        with_contracts = events / run_front_half(path, contracts_config())
        stage = (1 / with_contracts - 1 / front) * 1e6
        seconds, checked = time_enforcer(path, contracts_config())
        print("contracts (samples/contracts, policies allow):")
        print(f"  front half with contracts:                         {with_contracts:10,.0f} events/s  "
              f"stage cost {stage:5.2f} us/event (target <= 5)")
        print(f"  enforcer alone, outside Beam:                      {checked / seconds:10,.0f} events/s  "
              f"{seconds / checked * 1e6:5.2f} us/event")


if __name__ == "__main__":
    main()
