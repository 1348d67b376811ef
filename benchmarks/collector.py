"""Throughput and latency of the collection API (`python -m pipeline serve`) against a
baseline, in one run.

    python benchmarks/collector.py [--seconds 5] [--connections 64] [--rounds 3]
                                   [--only all|servers|collector] [--debugger on|off|both]

The machine's two cores are split: the server runs pinned to core 0, the load generator to
core 1. The load generator is this file's own (`--loadgen`): an asyncio client on uvloop
writing raw HTTP/1.1 on keep-alive connections, one request in flight per connection, timing
each request from its write to the last byte of its answer. Its ceiling is measured first
against a server that does nothing (a uvloop protocol answering every request from a constant),
so a figure near it would mean the client, not the server, is the limit.

  servers:   the baseline app (benchmarks/bare_asgi.py: reads the body, answers 200) under
             uvicorn (httptools + uvloop) and under granian (ASGI, uvloop), one worker each,
             sent the batch-1 request: the framework's ceiling, and how the collector's server
             was chosen (docs/benchmarks.md).
  collector: `python -m pipeline serve --sink DIR` (the spool sink: fsynced, group-committed)
             sent POST /v1/track (one event) and POST /v1/batch (100 events), in rounds
             alternating with the baseline under uvicorn (both servers up, on core 0), so a
             change in the machine's load moves both; the median round of each is printed.
             --debugger: the live debugger on (the default for a collector on loopback, as
             here), off (debugger.enabled: false), or both: two collectors, one of each, up
             together, taking turns in each round, so the debugger's cost per request is read
             from one run.
Prints requests/s, events/s, p50 and p99 latency; targets: batch 1 >= 0.5 of the baseline's
requests/s, batches of 100 >= 30,000 events/s.
"""
import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
WRITE_KEY = "bench-write-key"
SERVER_CORE, CLIENT_CORE = 0, 1


def event(i: int) -> dict:
    return {"type": "track", "event": "Product Viewed", "userId": f"user-{i % 1000}",
            "messageId": f"bench-{i}", "timestamp": "2026-12-02T10:00:00.000Z",
            "properties": {"product_id": f"p-{i % 50}", "price": 19.99, "currency": "USD",
                           "name": "Sluice T-shirt", "category": "apparel"},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"},
                        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"}}


def http_request(path: str, body: bytes) -> bytes:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def batch1() -> bytes:
    return http_request("/v1/track", json.dumps(event(1)).encode())


def batch100() -> bytes:
    return http_request("/v1/batch", json.dumps({"batch": [event(i) for i in range(100)]}).encode())


# ---------------------------------------------------------------- the load generator (core 1)

class _Connection(asyncio.Protocol):
    """One keep-alive connection sending `request` again as soon as each answer is complete."""

    def __init__(self, run):
        self.run, self.buffer, self.need, self.started = run, b"", None, 0.0

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        self.started = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data):
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) \
                    if at >= 0 else 0
                self.status, self.need = int(head[9:12]), end + 4 + length
            if len(self.buffer) < self.need:
                return
            self.buffer, self.need = self.buffer[self.need:], None
            now = time.perf_counter()
            self.run.answered(self.status, now - self.started, now)
            if now < self.run.deadline:
                self.send()
            else:
                self.transport.close()
                return

    def connection_lost(self, exc):
        self.run.closed()


class _Run:
    def __init__(self, request: bytes, connections: int, warmup: float, seconds: float):
        self.request, self.open = request, connections
        start = time.perf_counter()
        self.measure_from, self.deadline = start + warmup, start + warmup + seconds
        self.latencies, self.statuses, self.all = [], {}, 0
        self.finished = asyncio.get_running_loop().create_future()

    def answered(self, status: int, latency: float, now: float):
        self.all += 1
        if now >= self.measure_from and now < self.deadline:
            self.latencies.append(latency)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def closed(self):
        self.open -= 1
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)


async def _load(port: int, request: bytes, connections: int, warmup: float, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    run = _Run(request, connections, warmup, seconds)
    for _ in range(connections):
        await loop.create_connection(lambda: _Connection(run), "127.0.0.1", port)
    try:
        await asyncio.wait_for(run.finished, warmup + seconds + 30)
    except asyncio.TimeoutError:
        pass
    latencies = sorted(run.latencies)
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else \
        (lambda q: float("nan"))
    return {"requests": len(latencies), "seconds": seconds, "statuses": run.statuses, "all_requests": run.all,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def loadgen_main(spec: str):
    import uvloop
    spec = json.loads(spec)
    request = Path(spec["request_file"]).read_bytes()
    result = uvloop.run(_load(spec["port"], request, spec["connections"], spec["warmup"], spec["seconds"]))
    print(json.dumps(result))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants (granian's workers)."""
    tree, total = {pid}, 0.0
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    grew = True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    for member in tree:
        total += stats.get(member, (0, 0))[1]
    return total / os.sysconf("SC_CLK_TCK")


def load(port: int, request: bytes, connections: int, seconds: float, warmup: float = 2.0,
         server_pid: int = None) -> dict:
    """The load generator in a process of its own, on core 1; with server_pid, the server's CPU
    time per request answered (warm-up included) as `cpu_us`."""
    before = cpu_seconds(server_pid) if server_pid else None
    with tempfile.NamedTemporaryFile(suffix=".http") as handle:
        handle.write(request)
        handle.flush()
        spec = json.dumps({"port": port, "request_file": handle.name, "connections": connections,
                           "warmup": warmup, "seconds": seconds})
        out = subprocess.run(["taskset", "-c", str(CLIENT_CORE), sys.executable, __file__, "--loadgen", spec],
                             check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    if server_pid:
        result["cpu_us"] = (cpu_seconds(server_pid) - before) / max(1, result["all_requests"]) * 1e6
    return result


# ---------------------------------------------------------------- servers (core 0)

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout:.0f} s")


class Server:
    def __init__(self, argv: list, cwd=ROOT):
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.process = subprocess.Popen(["taskset", "-c", str(SERVER_CORE)] + argv, cwd=cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        wait_listening(self.port, self.process)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


NULL_SERVER = """
import asyncio, sys, uvloop
ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 16\\r\\n\\r\\n{\\"success\\":true}"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf, self.need = t, b"", None
    def data_received(self, d):
        self.buf += d
        while True:
            if self.need is None:
                end = self.buf.find(b"\\r\\n\\r\\n")
                if end < 0: return
                head = self.buf[:end].lower(); at = head.find(b"content-length:")
                self.need = end + 4 + int(head[at + 15:].split(b"\\r\\n")[0])
            if len(self.buf) < self.need: return
            self.buf, self.need = self.buf[self.need:], None
            self.t.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""


def null_server():
    return Server([sys.executable, "-c", NULL_SERVER, "{port}"])


def uvicorn_bare():
    return Server([sys.executable, "-m", "uvicorn", "bare_asgi:app", "--port", "{port}", "--loop", "uvloop",
                   "--http", "httptools", "--no-access-log", "--log-level", "warning",
                   "--lifespan", "off"], cwd=HERE)


def granian_bare():
    return Server([sys.executable, "-m", "granian", "--interface", "asgi", "--port", "{port}", "--loop", "uvloop",
                   "--no-ws", "--workers", "1", "--runtime-threads", "1", "--log-level", "warning",
                   "bare_asgi:app"], cwd=HERE)


def collector_server(spool: str, config: str):
    return Server([sys.executable, "-m", "pipeline", "serve", "--config", config, "--sink", spool,
                   "--port", "{port}"])


def write_config(directory: str, debugger: str = "on") -> str:
    """The bench source; `debugger: off` turns the debugger off (on, it is the loopback default)."""
    path = os.path.join(directory, f"bench-debugger-{debugger}.yaml")
    Path(path).write_text(
        "sources:\n"
        f"  - name: bench\n    write_key: {WRITE_KEY}\n"
        "    rate_limit: {events_per_second: 100000000, burst: 100000000}\n"
        + ("debugger: {enabled: false}\n" if debugger == "off" else ""))
    return path


def line(name: str, result: dict, events_per_request: int = 1, baseline: dict = None) -> str:
    rate = result["requests"] / result["seconds"]
    text = (f"  {name:<44}{rate:10,.0f} req/s {rate * events_per_request:10,.0f} events/s"
            f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms")
    if "cpu_us" in result:
        text += f"  server CPU {result['cpu_us']:5.1f} us/req"
    if baseline:
        text += f"  ratio {rate / (baseline['requests'] / baseline['seconds']):.2f}"
        if "cpu_us" in result and "cpu_us" in baseline:
            text += f" (by CPU {baseline['cpu_us'] / result['cpu_us']:.2f})"
    bad = {s: n for s, n in result["statuses"].items() if str(s) != "200"}
    if bad:
        text += f"  NOT 200: {bad}"
    return text


def median(results: list) -> dict:
    """The round with the median requests/s (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r["requests"])
    return ordered[len(ordered) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", choices=("all", "servers", "collector"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="collector: rounds alternating with the baseline")
    parser.add_argument("--debugger", choices=("on", "off", "both"), default="on",
                        help="collector: the live debugger on (loopback's default), off, or both in turns")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        return loadgen_main(args.loadgen)
    if not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("benchmarks/collector.py needs two cores and taskset (util-linux)")
    one, hundred = batch1(), batch100()
    seconds, connections = args.seconds, args.connections
    load_average = os.getloadavg()[0]
    if load_average > 0.5:
        print(f"note: the machine's load average is {load_average:.1f} before starting: figures will be low")
    print(f"{connections} keep-alive connections, {seconds:.0f} s each after 2 s of warm-up; "
          f"server on core {SERVER_CORE}, load generator on core {CLIENT_CORE}; "
          f"batch 1: {len(one):,} bytes a request, batch 100: {len(hundred):,}")
    with null_server() as server:
        ceiling = load(server.port, one, connections, seconds)
    print(line("load generator ceiling (a server doing nothing)", ceiling))
    if args.only in ("all", "servers"):
        print("baseline app (read the body, answer 200), one worker:")
        for name, start in (("uvicorn 0.54 + httptools + uvloop", uvicorn_bare),
                            ("granian 2.8 (asgi, uvloop)", granian_bare)):
            with start() as server:
                pid = server.process.pid
                print(line(f"{name}, batch 1", load(server.port, one, connections, seconds, server_pid=pid)))
                print(line(f"{name}, batch 100", load(server.port, hundred, connections, seconds, server_pid=pid),
                           100))
    if args.only in ("all", "collector"):
        collector_rounds(args, one, hundred, connections, seconds)


def collector_rounds(args, one: bytes, hundred: bytes, connections: int, seconds: float):
    variants = ("off", "on") if args.debugger == "both" else (args.debugger,)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as directory, contextlib.ExitStack() as stack:
        print(f"collector (python -m pipeline serve --sink DIR: spool, fsync, group commit; debugger "
              f"{' / '.join(variants)}), {args.rounds} rounds alternating with the baseline, medians:")
        baseline_server = stack.enter_context(uvicorn_bare())
        servers = {variant: stack.enter_context(collector_server(os.path.join(directory, f"spool-{variant}"),
                                                                 write_config(directory, variant)))
                   for variant in variants}
        runs = {"baseline": []}
        for number in range(args.rounds):
            turns = [("baseline", baseline_server, one)]
            # the order of the variants alternates too: neither always runs just after the baseline
            for variant in (variants if number % 2 == 0 else variants[::-1]):
                turns += [(f"{variant} one", servers[variant], one), (f"{variant} hundred", servers[variant], hundred)]
            for name, server, request in turns:
                runs.setdefault(name, []).append(load(server.port, request, connections, seconds,
                                                      server_pid=server.process.pid))
    baseline = median(runs["baseline"])
    print(line("baseline: uvicorn, bare 200, batch 1", baseline))
    for variant in variants:
        print(line(f"collector, debugger {variant}, POST /v1/track, batch 1", median(runs[f"{variant} one"]), 1,
                   baseline))
        print(line(f"collector, debugger {variant}, POST /v1/batch, batch 100", median(runs[f"{variant} hundred"]),
                   100, baseline))
    for variant in variants:
        ratios = [o["requests"] / b["requests"] for o, b in zip(runs[f"{variant} one"], runs["baseline"])]
        by_cpu = [b["cpu_us"] / o["cpu_us"] for o, b in zip(runs[f"{variant} one"], runs["baseline"])]
        print(f"  debugger {variant}: batch 1 ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}; by server "
              f"CPU per request (what a machine to itself would show): {', '.join(f'{r:.2f}' for r in by_cpu)}")
    if len(variants) == 2:
        costs = [on["cpu_us"] - off["cpu_us"] for on, off in zip(runs["on one"], runs["off one"])]
        print(f"  the debugger's server CPU per batch-1 request (on - off), per round: "
              f"{', '.join(f'{c:+.1f} us' for c in costs)}")
    print("targets: batch 1 ratio >= 0.50; batch 100 >= 30,000 events/s")


if __name__ == "__main__":
    main()
