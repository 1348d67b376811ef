"""Throughput of the batch pipeline against dlt and a baseline, in one run.

    python benchmarks/throughput.py [--events 200000] [--rounds 3] [--only peers]

Generates N events with the sample mix (all six types, batch envelopes, nested context,
arrays, unicode), then:

Side by side (first; `--only peers` for this alone): in alternating rounds, each run in a
process of its own over the same file into a fresh DuckDB file,
  sluice:       the whole pipeline on one FnApiRunner worker;
  dlt segment:  dlt routing the events into Segment's layout (benchmarks/peers.py);
  dlt one row:  dlt loading one row per event into one table;
  reference:    DuckDB alone, read_json and SQL flattening into Segment's layout.
dlt runs from .bench/dlt (`make bench` installs benchmarks/dlt-requirements.txt there) and is
skipped, with one line, when that environment is missing or broken. Prints the medians of
events/s and peak resident memory of each, and the ratios sluice/dlt. Each run's tables are
read back and must hold every event, or the benchmark stops.

Then times, on one FnApiRunner worker reading the same file:
  baseline: the same file source, each line parsed and serialized again, nothing else;
  sluice:   the whole pipeline into a fresh DuckDB file.
Prints events/s for both and the ratio sluice/baseline.

Contracts: the same front half is run again with the sample contracts
(samples/contracts, every policy `allow`) and the difference is the Contracts stage's cost
per event; the enforcer alone is also timed over the normalized events, outside Beam.

Consent and transformations: the input is varied the way real traffic is (consent objects
on most web events, thousands of distinct user agents, some emails in context.traits), then
the front half runs with and without benchmarks/realistic-rules.yaml (consent for the
warehouse and two destinations, ten rules of every kind); the difference is the two
stages' cost per event. Each rule's own cost is also timed outside Beam.

Peak memory: `python -m pipeline` runs in a process of its own over inputs of two sizes
(--memory-events, default 100,000 and 1,000,000 events) and its peak resident memory is
printed for each, with their ratio: memory must stay flat as the input grows (target 1.3).

Two reference points, measured in the same run, say where a faster Sluice could come from:
  front half:    read, decode and normalize, with the warehouse sink replaced by a no-op;
  storage floor: DuckDB alone writing the rows Sluice wrote (same tables, keys, batch
                 size and one commit per batch), from ready-made Arrow tables.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))

import pipeline  # noqa: E402,F401 - before Beam: it silences Beam's apitools notice
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

from generate import generate  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline import contracts as contracts_module  # noqa: E402
from pipeline import config as config_module  # noqa: E402
from pipeline.config import Config, validate  # noqa: E402
from transforms import consent  # noqa: E402
from transforms.rules.engine import TransformRules  # noqa: E402
from transforms.contracts.enforce import ContractEnforcer  # noqa: E402
from transforms.decode import DecodeLimits, decode_message  # noqa: E402
from transforms.messages import RawMessage  # noqa: E402
from transforms.normalize import normalize_event  # noqa: E402
from pipeline.graph import build_graph, build_warehouse_graph  # noqa: E402
from pipeline.sources import ReadInputFiles  # noqa: E402
from transforms.warehouse.sink import BACKFILL_BATCH_SIZE  # noqa: E402
from peers import expected_rows, stored_rows, table_rows  # noqa: E402 - benchmarks/peers.py


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
    bodies = normalized_bodies(path)
    enforcer = ContractEnforcer(config.contracts)
    start = time.perf_counter()
    for body in bodies:
        enforcer.check(body)
    return time.perf_counter() - start, len(bodies)


RULES = ROOT / "benchmarks" / "realistic-rules.yaml"
_BROWSERS = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{a}) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/{b}.0.{c}.{d} Safari/537.36",
             "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{b}.0) Gecko/20100101 Firefox/{b}.{a}",
             "Mozilla/5.0 (iPhone; CPU iPhone OS {a}_{d} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/{a}.{d} Mobile/15E148 Safari/604.1",
             "Mozilla/5.0 (Linux; Android {a}; SM-S9{d}8B) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/{b}.0.{c}.{d} Mobile Safari/537.36")


def _vary(event: dict, rng: random.Random, agents: list) -> None:
    context = event.get("context")
    if not isinstance(context, dict):
        return
    if "userAgent" in context:  # a Zipf-like pick: a few agents are common, most are rare
        context["userAgent"] = agents[min(int(rng.paretovariate(1.2)) - 1, len(agents) - 1)]
        if rng.random() < 0.8:
            context["consent"] = {"categoryPreferences": {"analytics": rng.random() < 0.9,
                                                          "marketing": rng.random() < 0.5,
                                                          "advertising": rng.random() < 0.3}}
    if rng.random() < 0.2:
        context["traits"] = {"email": f"Person{rng.randint(1, 5000)}@Example.com"}


def write_realistic_variant(source: str, target: str) -> int:
    """The benchmark input, varied like real traffic; returns the number of distinct agents."""
    rng = random.Random(7)
    agents = [rng.choice(_BROWSERS).format(a=rng.randint(9, 17), b=rng.randint(90, 131), c=rng.randint(1000, 6999),
                                           d=rng.randint(0, 9)) for _ in range(5000)]
    seen = set()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for line in reader:
            message = orjson.loads(line)
            for event in message.get("batch", [message]):
                _vary(event, rng, agents)
                seen.add((event.get("context") or {}).get("userAgent"))
            writer.write(orjson.dumps(message) + b"\n")
    return len(seen - {None})


def normalized_bodies(path: str) -> list:
    bodies = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            for event in decode_message(RawMessage(line.rstrip(b"\n"), {}, "bench", None, str(number)),
                                        "2026-11-02T09:00:00.000000Z", DecodeLimits()):
                bodies.append(normalize_event(event.body, event.received_at, True, event.original))
    return bodies


def time_rules(path: str, config: Config) -> list:
    """[(stage, us per event)]: consent, then each rule added to the ones before it, outside Beam."""
    bodies = normalized_bodies(path)
    start = time.perf_counter()
    for body in bodies:
        consent.route(body, config.consent)
    costs = [("consent", (time.perf_counter() - start) / len(bodies) * 1e6)]
    specs, previous = list(config.transforms.rules), 0.0
    for count in range(1, len(specs) + 1):
        rules, counts = TransformRules(specs[:count]), Counter()
        for body in bodies[:2000]:  # warm the user-agent cache as a long-running worker would be
            rules.apply(body, "file:bench", counts)
        start = time.perf_counter()
        for body in bodies:
            rules.apply(body, "file:bench", counts)
        total = (time.perf_counter() - start) / len(bodies) * 1e6
        costs.append((specs[count - 1]["name"], total - previous))
        previous = total
    return costs


def report_rules(path: str, tmp: str) -> None:
    os.environ.setdefault("SLUICE_HASH_SALT", "benchmark-only-salt")
    varied = os.path.join(tmp, "varied.jsonl")
    agents = write_realistic_variant(path, varied)
    config = config_module.load(str(RULES))
    events = sum(1 for _ in normalized_bodies(varied))
    plain = events / run_front_half(varied, Config())
    ruled = events / run_front_half(varied, config)
    print(f"consent and transformations ({RULES.name}, {len(config.transforms.rules)} rules; "
          f"{agents:,} distinct user agents):")
    print(f"  front half without:                                {plain:10,.0f} events/s")
    print(f"  front half with consent and rules:                 {ruled:10,.0f} events/s  "
          f"stage cost {(1 / ruled - 1 / plain) * 1e6:5.2f} us/event")
    print("  outside Beam, us/event (each rule's share):")
    for name, cost in time_rules(varied, config):
        print(f"    {name:<28}{cost:6.2f}")


# Runs a command and prints its peak resident memory in KB. A child's peak counts from its fork,
# when it still shares this (large) process's pages, and Linux keeps that figure across exec;
# started from this small go-between instead, the pipeline's figure is its own.
_PEAK_OF = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, status, usage = os.wait4(child.pid, 0); print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))")


def peak_memory(path: str, warehouse: str) -> tuple:
    """(peak resident memory in MB, seconds) of `python -m pipeline` over `path`, in a process of
    its own (the figure a user sees, with nothing of this process's own data in it)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_OF, sys.executable, "-m", "pipeline", "--input_files", path,
                           "--warehouse", warehouse], cwd=ROOT, capture_output=True, text=True)
    kilobytes, status = (int(n) for n in done.stdout.split())
    if status != 0:
        raise SystemExit(f"sluice failed on {path}: {done.stderr[-2000:]}")
    return kilobytes / 1024, time.perf_counter() - start


def report_memory(sizes: list, tmp: str) -> None:
    """Peak memory of a whole run at two (or more) input sizes: it must not grow with the input."""
    print("peak memory of `python -m pipeline` into DuckDB (its own process):")
    peaks = []
    for size in sizes:
        path = os.path.join(tmp, f"memory-{size}.jsonl")
        write_input(path, size)
        megabytes, seconds = peak_memory(path, f"duckdb:///{tmp}/memory-{size}.duckdb")
        os.remove(path)
        peaks.append(megabytes)
        print(f"  {size:>10,} events: {megabytes:7.0f} MB peak  ({size / seconds:,.0f} events/s with start-up)")
    print(f"  ratio largest/smallest: {peaks[-1] / peaks[0]:.2f}  (target <= 1.30)")


DLT_PYTHON = ROOT / ".bench" / "dlt" / "bin" / "python"
PEERS = ROOT / "benchmarks" / "peers.py"
LAYOUT = ("tracks", "identifies", "pages", "screens", "groups", "aliases", "users", "event tables")


def dlt_version() -> str:
    pins = (ROOT / "benchmarks" / "dlt-requirements.txt").read_text().splitlines()
    return next(line.split("==")[1] for line in pins if line.startswith("dlt=="))


def dlt_unusable() -> str:
    """Why .bench/dlt cannot run dlt, in one line, or '' when it can."""
    if not DLT_PYTHON.exists():
        return f"{DLT_PYTHON.relative_to(ROOT)} is missing (`make bench` installs it)"
    done = subprocess.run([str(DLT_PYTHON), "-c", "import dlt, duckdb, pyarrow"], capture_output=True, text=True)
    if done.returncode:
        return f"{DLT_PYTHON.relative_to(ROOT)} cannot import dlt: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return ""


# As _PEAK_OF, and the child's CPU time (user + system, all its threads) beside its peak.
_USAGE_OF = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "_, status, usage = os.wait4(child.pid, 0); "
             "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status))")


def measured(command: list, result: str) -> tuple:
    """(seconds the command reports in `result`, its peak resident memory in MB, its CPU seconds from
    start to exit), run in a process of its own started from a small go-between (see _PEAK_OF)."""
    done = subprocess.run([sys.executable, "-c", _USAGE_OF, *command], cwd=ROOT, capture_output=True, text=True)
    kilobytes, cpu, status = done.stdout.split()
    if int(status) != 0:
        raise SystemExit(f"{' '.join(command[1:3])} failed: {done.stderr[-3000:]}")
    with open(result) as handle:
        return json.load(handle)["seconds"], int(kilobytes) / 1024, float(cpu)


def check_rows(name: str, database: str, schema: str, expected: dict, one_row: bool) -> dict:
    """The run's tables, read back: they must hold every event (a failing run can't look fast)."""
    rows = table_rows(database, schema)
    got, keys = stored_rows(rows), ("events",) if one_row else LAYOUT
    wrong = {key: (got[key], expected[key]) for key in keys if got[key] != expected[key]}
    if wrong:
        raise SystemExit(f"{name} did not store every event ({{table: (rows, expected)}}): {wrong}; tables: {rows}")
    return rows


def _median(values: list) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def report_peers(path: str, events: int, tmp: str, rounds: int) -> None:
    """Sluice, dlt (Segment's layout, one row per event) and DuckDB's own reference, alternating."""
    expected = expected_rows(path)
    if expected["events"] != events:
        raise SystemExit(f"the file holds {expected['events']} events, not {events}")
    result = os.path.join(tmp, "result.json")
    runs = [("sluice", lambda db: [sys.executable, __file__, "--run-sluice", path, db, result], "main", False),
            ("dlt segment", lambda db: [str(DLT_PYTHON), str(PEERS), "dlt-segment", path, db, result], "segment",
             False),
            ("dlt one row", lambda db: [str(DLT_PYTHON), str(PEERS), "dlt-rows", path, db, result], "segment", True),
            ("reference", lambda db: [sys.executable, str(PEERS), "reference", path, db, result], "main", False)]
    unusable = dlt_unusable()
    if unusable:
        print(f"dlt skipped: {unusable}")
        runs = [run for run in runs if not run[0].startswith("dlt")]
    print(f"side by side, {rounds} alternating rounds, each run in its own process into a fresh DuckDB file "
          f"(load average at the start: {' '.join(f'{n:.2f}' for n in os.getloadavg())}):")
    seconds, peaks, cpus = ({name: [] for name, *_ in runs} for _ in range(3))
    for round_number in range(1, rounds + 1):
        line = []
        for name, command, schema, one_row in runs:
            database = os.path.join(tmp, f"{name.replace(' ', '-')}-{round_number}.duckdb")
            elapsed, megabytes, cpu = measured(command(database), result)
            check_rows(name, database, schema, expected, one_row)
            os.remove(database)
            seconds[name].append(elapsed)
            peaks[name].append(megabytes)
            cpus[name].append(cpu)
            line.append(f"{name} {events / elapsed:,.0f}")
        print(f"  round {round_number}: " + ", ".join(line) + " events/s"
              f"  (load {os.getloadavg()[0]:.2f})")
    labels = {"sluice": "Sluice, Segment layout (one worker)",
              "dlt segment": f"dlt {dlt_version()}, Segment layout (parquet, 1 worker)",
              "dlt one row": f"dlt {dlt_version()}, one row per event (parquet)",
              "reference": "DuckDB read_json + SQL, Segment layout"}
    rates = {name: events / _median(times) for name, times in seconds.items()}
    print(f"  {'medians:':<53}{'events/s':>10}{'seconds':>9}{'peak RSS':>10}{'CPU us/event':>14}")
    for name in seconds:
        print(f"  {labels[name]:<53}{rates[name]:10,.0f}{_median(seconds[name]):9.2f}"
              f"{_median(peaks[name]):7.0f} MB{_median(cpus[name]) / events * 1e6:14.1f}")
    for name, target in (("dlt segment", 2.0), ("dlt one row", 1.5)):
        if name in rates:
            each = [other / mine for mine, other in zip(seconds["sluice"], seconds[name])]
            print(f"  ratio sluice/{name}: {rates['sluice'] / rates[name]:.2f} (target >= {target}; "
                  f"rounds {min(each):.2f} to {max(each):.2f})")
    print("  (CPU: the whole process, start-up and imports included, all threads; less moved by other jobs "
          "than events/s)")
    print(f"  rows checked: {expected['events']:,} events; Segment layout {sum(expected[k] for k in LAYOUT):,} rows "
          f"({expected['users']:,} users) in each of its runs; dlt's child tables of lists not counted")


def sluice_child(path: str, database: str, result: str) -> None:
    """One timed Sluice run for report_peers, in this process of its own: the command users run
    (`python -m pipeline --input_files FILE --warehouse duckdb:///FILE`), its defaults."""
    from pipeline.main import run
    start = time.perf_counter()
    summary_ = run(["--input_files", path, "--warehouse", f"duckdb:///{database}"])
    elapsed = time.perf_counter() - start
    if not summary_["conservation"]["holds"] or summary_["stored"] != summary_["events"]:
        raise SystemExit(f"sluice did not store every event: {summary_}")
    with open(result, "w") as handle:
        json.dump({"seconds": elapsed}, handle)


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
    parser.add_argument("--only", choices=("all", "peers", "rules", "memory"), default="all",
                        help="peers: only Sluice beside dlt and DuckDB's reference; rules: only the consent and "
                             "transformations measurement; memory: only peak memory")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds side by side (default %(default)s)")
    parser.add_argument("--run-sluice", nargs=3, metavar=("INPUT", "DATABASE", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-events", default="100000,1000000",
                        help="input sizes (comma-separated) whose peak memory is compared (default %(default)s)")
    args = parser.parse_args()
    if args.run_sluice:
        sluice_child(*args.run_sluice)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.only == "memory":
            report_memory([int(n) for n in args.memory_events.split(",")], tmp)
            return
        path = os.path.join(tmp, "events.jsonl")
        messages, events = write_input(path, args.events)
        size_mb = os.path.getsize(path) / 1e6
        print(f"input: {events:,} events in {messages:,} messages, {size_mb:.1f} MB")
        if args.only == "rules":
            report_rules(path, tmp)
            return
        report_peers(path, events, tmp, args.rounds)
        if args.only == "peers":
            return
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
        floor = events / storage_floor(f"{tmp}/bench.duckdb", f"{tmp}/floor.duckdb", -(-events // BACKFILL_BATCH_SIZE))
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
        report_rules(path, tmp)
        os.remove(path)
        report_memory([int(n) for n in args.memory_events.split(",")], tmp)


if __name__ == "__main__":
    main()
