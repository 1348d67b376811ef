"""Embedded mode (`python -m pipeline serve --warehouse duckdb:///PATH`): what one Beam run per
batch costs, how many events/s the collector sustains while loading them, and how long an
event takes from its send to a row a query sees.

    python benchmarks/embedded.py [--only all|runs|serve] [--rate 3000] [--seconds 60] [--batch 100]

  runs:  the loader's runs alone, in this process (pipeline.main.FileLoads, the batch graph on
         FnApiRunner, the warehouse held open as serve holds it): the fixed cost of a run (a
         one-event file, median of 15 after 3 warm-ups) and events/s over files of 1,000 to
         100,000 events.
  serve: the real command in a process of its own, sent `--rate` events/s for `--seconds` in
         POST /v1/batch requests of `--batch` events (keep-alive connections, paced), while this
         process polls the warehouse through `python -m pipeline.query`'s route (the serve file's
         port and token) every 0.25 s. An event's send-to-row latency is from the moment its
         request was written to the first poll that saw its row (so it includes up to 0.25 s of
         polling); also reported: the same to the row's loaded_at (the warehouse's own clock at
         the write), and the time from the last send until every event was a row.
Targets (issue 16): >= 3,000 events/s sustained with p95 send-to-row <= 10 s, on 2 cores. The
server and this client share the machine's cores (nothing is pinned: the server's process runs
the HTTP server and the Beam runs).
"""
import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WRITE_KEY = "bench-embedded-key"
TABLE = "product_viewed"


def event(i: int, sent_ms: int) -> dict:
    return {"type": "track", "event": "Product Viewed", "userId": f"user-{i % 1000}",
            "messageId": f"bench-{i}", "timestamp": "2026-12-02T10:00:00.000Z",
            "properties": {"seq": i, "sent_ms": sent_ms, "product_id": f"p-{i % 50}", "price": 19.99,
                           "currency": "USD", "name": "Sluice T-shirt", "category": "apparel"},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"},
                        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"}}


def percentile(values: list, p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- runs: the loader alone ---------------------------------------------------------------
def spool_file(directory: str, name: str, events: int, per_record: int = 100) -> str:
    path = os.path.join(directory, name)
    now = int(time.time() * 1000)
    with open(path, "w") as handle:
        for start in range(0, events, per_record):
            batch = [event(i, now) for i in range(start, min(events, start + per_record))]
            handle.write(json.dumps({"batch": batch, "source": "bench",
                                     "receivedAt": "2026-12-02T10:00:00.000Z"}) + "\n")
    return path


def bench_runs(work: str) -> dict:
    import logging
    logging.basicConfig(level=logging.WARNING)
    from pipeline.main import FileLoads
    loads = FileLoads(["--warehouse", f"duckdb:///{work}/runs.duckdb"])
    counter = iter(range(10 ** 9))

    def one(events: int) -> float:
        index = next(counter)
        path = spool_file(work, f"run-{index}.jsonl", events)
        # distinct message ids per file: every run stores, none is a duplicate
        text = Path(path).read_text().replace('"bench-', f'"bench-{index}-')
        Path(path).write_text(text)
        started = time.perf_counter()
        summary = loads([path])
        elapsed = time.perf_counter() - started
        assert summary["stored"] == events and summary["conservation"]["holds"], summary
        return elapsed

    for _ in range(3):
        one(1)
    fixed = [one(1) for _ in range(15)]
    result = {"run_seconds_1_event": {"median": statistics.median(fixed), "min": min(fixed), "max": max(fixed)}}
    for events in (1_000, 10_000, 100_000):
        seconds = one(events)
        result[f"events_per_second_{events}"] = events / seconds
        result[f"run_seconds_{events}"] = seconds
    loads.close()
    return result


# -- serve: the command under load ------------------------------------------------------
def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(work: str) -> tuple:
    config = os.path.join(work, "sluice.yaml")
    Path(config).write_text(f"sources:\n  - name: bench\n    write_key: {WRITE_KEY}\n"
                            "    rate_limit: {events_per_second: 1000000, burst: 1000000}\n")
    warehouse = os.path.join(work, "serve.duckdb")
    port = free_port()
    log = open(os.path.join(work, "serve.log"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--config", config,
                                "--warehouse", f"duckdb:///{warehouse}", "--port", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    serve_file = warehouse + ".serve.json"
    deadline = time.monotonic() + 90
    while not os.path.exists(serve_file):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serve did not start: {Path(work, 'serve.log').read_text()[-2000:]}")
        time.sleep(0.1)
    time.sleep(0.2)
    return process, port, json.loads(Path(serve_file).read_text()), warehouse


def query(served: dict, sql: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{served['port']}{served['path']}",
                                     data=json.dumps({"sql": sql}).encode(),
                                     headers={"Authorization": f"Bearer {served['token']}"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())


class Sender(threading.Thread):
    """Sends its share of the rate in requests of `batch` events, paced, on one keep-alive
    connection; records (first seq, events, send time) for each acknowledged request."""

    def __init__(self, port: int, rate: float, seconds: float, batch: int, first: int, stride: int):
        super().__init__(daemon=True)
        self.port, self.rate, self.seconds, self.batch = port, rate, seconds, batch
        self.first, self.stride = first, stride
        self.sent, self.failed, self.latencies = [], 0, []

    def run(self):
        auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        interval = self.batch / self.rate
        start = time.monotonic()
        n = 0
        while True:
            due = start + n * interval
            if due - start >= self.seconds:
                break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            first = (self.first + n * self.stride) * self.batch
            sent_ms = int(time.time() * 1000)
            body = json.dumps({"batch": [event(first + k, sent_ms) for k in range(self.batch)]})
            try:
                began = time.perf_counter()
                connection.request("POST", "/v1/batch", body, {"Authorization": auth,
                                                               "Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self.latencies.append(time.perf_counter() - began)
                if response.status == 200:
                    self.sent.append((first, self.batch, sent_ms / 1000))
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            n += 1


def bench_serve(work: str, rate: float, seconds: float, batch: int, senders: int = 4) -> dict:
    process, port, served, _ = start_server(work)
    visible = {}      # seq -> (first poll time that saw it, loaded_at epoch)
    stop = threading.Event()
    last = ["1970-01-01 00:00:00+00"]

    def poll():
        while not stop.is_set():
            try:
                exists = query(served, f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{TABLE}'")
                if exists["rows"][0][0]:
                    answer = query(served, f"SELECT CAST(loaded_at AS VARCHAR), epoch(loaded_at), list(seq) "
                                           f"FROM {TABLE} WHERE loaded_at > '{last[0]}'::TIMESTAMPTZ "
                                           "GROUP BY loaded_at ORDER BY loaded_at")
                    now = time.time()
                    for loaded_text, loaded_epoch, seqs in answer["rows"]:
                        for seq in seqs:
                            visible.setdefault(seq, (now, loaded_epoch))
                        last[0] = loaded_text
            except Exception as exc:  # noqa: BLE001 - a benchmark: report and go on polling
                print(f"poll failed: {exc}", file=sys.stderr)
            stop.wait(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [Sender(port, rate / senders, seconds, batch, i, senders) for i in range(senders)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    send_end = time.time()
    sent = [s for thread in threads for s in thread.sent]
    expected = {first + k for first, count, _ in sent for k in range(count)}
    deadline = time.time() + 120
    while time.time() < deadline and not expected <= visible.keys():
        time.sleep(0.1)
    all_visible = time.time()
    stop.set()
    poller.join()
    metrics = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    process.send_signal(signal.SIGTERM)
    stopping = time.time()
    code = process.wait(60)
    stopped = time.time() - stopping

    send_at = {first + k: at for first, count, at in sent for k in range(count)}
    to_poll = [visible[s][0] - send_at[s] for s in expected if s in visible]
    to_loaded = [visible[s][1] - send_at[s] for s in expected if s in visible]
    events = len(expected)
    answers = [x for thread in threads for x in thread.latencies]
    return {"request_seconds": {p: percentile(answers, p) for p in (50, 99, 100)} if answers else {},
            "target_events_per_second": rate, "batch": batch, "seconds": seconds,
            "events_acknowledged": events, "requests_failed": sum(t.failed for t in threads),
            "sent_events_per_second": events / (send_end - started),
            "rows_seen": sum(1 for s in expected if s in visible),
            "sustained_events_per_second": events / (all_visible - started),
            "last_send_to_all_rows_seconds": all_visible - send_end,
            "send_to_row_seconds": {p: percentile(to_poll, p) for p in (50, 95, 99, 100)} if to_poll else {},
            "send_to_loaded_at_seconds": {p: percentile(to_loaded, p) for p in (50, 95, 99, 100)} if to_loaded else {},
            "loader_metrics": {line.split(" ")[0]: line.split(" ")[1] for line in metrics.splitlines()
                               if line.startswith("sluice_embedded_") and " " in line},
            "exit_code": code, "stop_seconds": stopped}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("all", "runs", "serve"), default="all")
    parser.add_argument("--rate", type=float, default=3000.0, help="events/s to send (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=100, help="events per request (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-bench-embedded-")
    try:
        if args.only in ("all", "runs"):
            runs = bench_runs(work)
            fixed = runs["run_seconds_1_event"]
            print(f"one run, one event:  median {fixed['median']:.3f} s (min {fixed['min']:.3f}, "
                  f"max {fixed['max']:.3f}): the fixed cost of a Beam run on FnApiRunner")
            for events in (1_000, 10_000, 100_000):
                print(f"one run, {events:>7,} events: {runs[f'run_seconds_{events}']:.2f} s, "
                      f"{runs[f'events_per_second_{events}']:,.0f} events/s")
        if args.only in ("all", "serve"):
            result = bench_serve(work, args.rate, args.seconds, args.batch)
            latency = result["send_to_row_seconds"]
            loaded = result["send_to_loaded_at_seconds"]
            print(f"serve, {result['target_events_per_second']:,.0f} events/s asked for {args.seconds:g} s in "
                  f"batches of {args.batch}: sent {result['sent_events_per_second']:,.0f} events/s "
                  f"({result['events_acknowledged']:,} acknowledged, {result['requests_failed']} requests failed), "
                  f"{result['rows_seen']:,} rows seen")
            if latency:
                print(f"  send to row (seen by a query): p50 {latency[50]:.2f} s, p95 {latency[95]:.2f} s, "
                      f"p99 {latency[99]:.2f} s, max {latency[100]:.2f} s")
                print(f"  send to loaded_at:             p50 {loaded[50]:.2f} s, p95 {loaded[95]:.2f} s, "
                      f"p99 {loaded[99]:.2f} s, max {loaded[100]:.2f} s")
            answers = result["request_seconds"]
            if answers:
                print(f"  requests answered (200 once fsynced) in: p50 {answers[50] * 1000:.1f} ms, "
                      f"p99 {answers[99] * 1000:.1f} ms, max {answers[100] * 1000:.1f} ms")
            print(f"  every row {result['last_send_to_all_rows_seconds']:.2f} s after the last send; sustained "
                  f"{result['sustained_events_per_second']:,.0f} events/s send-to-row; SIGTERM to exit "
                  f"{result['stop_seconds']:.2f} s (status {result['exit_code']})")
            m = result["loader_metrics"]
            if m:
                print(f"  loader: {m.get('sluice_embedded_runs_total')} runs, "
                      f"{m.get('sluice_embedded_failed_runs_total')} failed, run time "
                      f"{float(m.get('sluice_embedded_run_seconds_total', 0)):.1f} s")
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
