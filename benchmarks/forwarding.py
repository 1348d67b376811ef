"""Forwarding to a local webhook with batching on: events/s, against a bare client in the
same run.

    python benchmarks/forwarding.py [--events 50000] [--max-events 500]

Starts an HTTP receiver on 127.0.0.1 (a threaded stdlib server that counts events and
answers 200), generates N events with the sample's mix, and times on one FnApiRunner worker:
  1. the front half with no destination (read, decode, normalize, contracts, consent,
     transforms; nothing written): what the pipeline costs without forwarding;
  2. the same with one webhook destination (a 5-key mapping, batches of --max-events, signed);
  3. baseline: a bare http.client loop posting the same number of events, pre-serialized,
     in the same batch size to the same receiver (the receiver's ceiling).
Prints events/s for each, the forwarding run's ratio to the baseline, the cost of forwarding
per event (run 2 minus run 1), requests and the mean request latency.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pipeline  # noqa: E402,F401 - before Beam: it silences Beam's apitools notice
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

os.environ.setdefault("NO_GCE_CHECK", "true")
from throughput import Discard, write_input  # noqa: E402
from pipeline import summary  # noqa: E402
from pipeline.config import validate  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.sources import ReadInputFiles  # noqa: E402


def serve(port_file: str) -> None:
    """The receiver, in its own process (in the pipeline's process it would compete for the
    GIL): POST counts the batch's events; GET answers the count so far; DELETE resets it."""
    events, lock = [0], threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else each answer waits on the client's delayed ACK (40 ms)

        def _answer(self, body: bytes):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                events[0] += body.count(b'"id":')
            self._answer(b"{}")

        def do_GET(self):
            self._answer(str(events[0]).encode())

        def do_DELETE(self):
            events[0] = 0
            self._answer(b"0")

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


class Receiver:
    def __init__(self, tmp: str):
        port_file = Path(tmp) / "port"
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def _call(self, method: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request(method, "/")
        return int(conn.getresponse().read())

    @property
    def events(self) -> int:
        return self._call("GET")

    def reset(self) -> None:
        self._call("DELETE")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def config(url: str, max_events: int):
    return validate({"destinations": [{
        "name": "bench", "type": "webhook", "url": url, "allow_private_network": True,
        "signing_secret": {"env": "SLUICE_BENCH_SECRET"},
        "mapping": {"id": {"@path": "$.messageId"}, "type": {"@path": "$.type"}, "event": {"@path": "$.event"},
                    "user": {"@path": "$.userId"}, "page": {"@path": "$.context.page.url"}},
        "batch": {"max_events": max_events, "max_bytes": 5_000_000, "max_wait_seconds": 5}}]})


def run_front_half(path: str, cfg) -> tuple:
    start = time.perf_counter()
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build_graph(p, ReadInputFiles([path]), cfg, event_sink=Discard(), dead_letter_sink=Discard())
    result = p.run()
    result.wait_until_finish()
    return time.perf_counter() - start, summary.build(summary.counters_from_result(result))


def bare_client(port: int, events: int, max_events: int) -> float:
    payload = json.dumps({"id": "00000000-0000-0000-0000-000000000000", "type": "track", "event": "Order Completed",
                          "user": "user-123", "page": "https://example.com/checkout"}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the webhook sender does
    start, sent = time.perf_counter(), 0
    while sent < events:
        n = min(max_events, events - sent)
        body = b'{"batch":[' + b",".join([payload] * n) + b"]}"
        conn.request("POST", "/hook", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
        sent += n
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--max-events", type=int, default=500)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    os.environ.setdefault("SLUICE_BENCH_SECRET", "bench-secret")
    with tempfile.TemporaryDirectory() as tmp:
        receiver = Receiver(tmp)
        try:
            path = str(Path(tmp) / "events.jsonl")
            _, events = write_input(path, args.events)
            plain, _ = run_front_half(path, validate({}))
            forwarding, result = run_front_half(path, config(f"http://127.0.0.1:{receiver.port}/hook",
                                                             args.max_events))
            delivered = result["destinations"]["bench"]["delivered"]
            assert receiver.events == delivered, (receiver.events, delivered)
            receiver.reset()
            bare = bare_client(receiver.port, delivered, args.max_events)
            assert receiver.events == delivered
        finally:
            receiver.stop()
    bench = result["destinations"]["bench"]
    print(f"{events:,} events, batches of up to {args.max_events}, one FnApiRunner worker, receiver on 127.0.0.1")
    print(f"  baseline (bare http.client, same batches):  {delivered / bare:10,.0f} events/s")
    print(f"  front half, no destination:                 {events / plain:10,.0f} events/s")
    print(f"  front half + webhook forwarding:            {events / forwarding:10,.0f} events/s   "
          f"ratio {delivered / forwarding / (delivered / bare):.3f} to the baseline")
    print(f"  forwarding's cost: {(forwarding - plain) / events * 1e6:.1f} us per event; delivered {delivered:,} "
          f"in {bench['requests']:,} requests (mean {bench['latency_ms_mean']} ms), "
          f"failed {bench['failed']}, retried {bench['retried']}")


if __name__ == "__main__":
    main()
