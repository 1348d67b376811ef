"""Streaming from the Pub/Sub emulator into DuckDB on the local runner: messages/s, and the
latency from publish to row, against a plain subscriber in the same run.

    python benchmarks/streaming.py [--messages 3000] [--rate 20] [--seconds 15]

Starts the Pub/Sub emulator (Google Cloud SDK) on 127.0.0.1 and measures:
  1. baseline: a bare google-cloud-pubsub streaming-pull subscriber that acks each message
     and does nothing else; messages/s over a backlog of --messages. The emulator's ceiling.
  2. backlog: `python -m pipeline --input_subscription ...` (BundleBasedDirectRunner) drains
     the same backlog into DuckDB; messages/s from its start to the last row stored.
  3. latency: the pipeline running, messages published at --rate per second for --seconds;
     per row, loaded_at minus received_at (the publish time): p50, p95, max.
Prints the figures and the pipeline/baseline ratio.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_GCE_CHECK", "true")

import duckdb  # noqa: E402

from tests.integration.emulators import PubSubEmulator  # noqa: E402


def event(i: int, run: str) -> bytes:
    return json.dumps({"type": "track", "event": "Benchmark Event", "userId": f"u{i % 97}",
                       "messageId": f"{run}-{i}", "properties": {"i": i, "plan": "pro", "value": i * 0.5},
                       "context": {"library": {"name": "bench", "version": "1"}}}).encode()


class Topic:
    def __init__(self, project: str):
        from google.cloud import pubsub_v1
        self.publisher, self.subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        name = uuid.uuid4().hex[:8]
        self.topic = self.publisher.topic_path(project, f"bench-{name}")
        self.publisher.create_topic(name=self.topic)
        self.project = project

    def subscription(self) -> str:
        path = self.subscriber.subscription_path(self.project, f"bench-{uuid.uuid4().hex[:8]}")
        self.subscriber.create_subscription(name=path, topic=self.topic, ack_deadline_seconds=60)
        return path

    def publish(self, messages) -> None:
        futures = [self.publisher.publish(self.topic, data) for data in messages]
        for future in futures:
            future.result(timeout=60)


def baseline(topic: Topic, count: int) -> float:
    path = topic.subscription()
    topic.publish(event(i, "base") for i in range(count))
    done, seen = threading.Event(), []
    lock = threading.Lock()

    def callback(message):
        message.ack()
        with lock:
            seen.append(1)
            if len(seen) >= count:
                done.set()
    began = time.perf_counter()
    future = topic.subscriber.subscribe(path, callback)
    done.wait(300)
    took = time.perf_counter() - began
    future.cancel()
    return count / took


def start_pipeline(workdir: Path, emulator_host: str, subscription: str) -> subprocess.Popen:
    (workdir / "sluice.yaml").write_text("streaming:\n  max_buffering_seconds: 1\n")
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator_host}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "--input_subscription", subscription,
                             "--config", str(workdir / "sluice.yaml"), "--summary_path", str(workdir / "s.json"),
                             "--warehouse", f"duckdb:///{workdir}/w.duckdb"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_stored(workdir: Path, process, count: int, timeout: float = 900) -> float:
    """The time (perf_counter) at which the summary first shows `count` stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode()[-2000:])
        try:
            if json.loads((workdir / "s.json").read_text())["stored"] >= count:
                return time.perf_counter()
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not {count} rows stored in {timeout} s")


def stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def pipeline_backlog(topic: Topic, emulator_host: str, count: int, workdir: Path) -> float:
    subscription = topic.subscription()
    topic.publish(event(i, "backlog") for i in range(count))
    began = time.perf_counter()
    process = start_pipeline(workdir, emulator_host, subscription)
    try:
        first = wait_stored(workdir, process, 1)
        finished = wait_stored(workdir, process, count)
    finally:
        stop(process)
    return count / (finished - began), (count - 1) / (finished - first)


def pipeline_latency(topic: Topic, emulator_host: str, rate: float, seconds: float, workdir: Path) -> list:
    subscription = topic.subscription()
    process = start_pipeline(workdir, emulator_host, subscription)
    try:
        topic.publish([event(-1, "warmup")])
        wait_stored(workdir, process, 1, timeout=120)
        total = int(rate * seconds)
        for i in range(total):
            topic.publish([event(i, "latency")])
            time.sleep(1 / rate)
        wait_stored(workdir, process, total + 1)
    finally:
        stop(process)
    with duckdb.connect(str(workdir / "w.duckdb"), read_only=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT epoch_ms(loaded_at) - epoch_ms(received_at) FROM tracks "
            "WHERE message_id LIKE 'latency-%'").fetchall()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PubSubEmulator(Path(tmp) / "pubsub") as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        topic = Topic(emulator.project)
        base = baseline(topic, args.messages)
        (Path(tmp) / "backlog").mkdir()
        sluice, steady = pipeline_backlog(topic, emulator.host, args.messages, Path(tmp) / "backlog")
        (Path(tmp) / "latency").mkdir()
        latencies = sorted(pipeline_latency(topic, emulator.host, args.rate, args.seconds, Path(tmp) / "latency"))
    print(f"backlog of {args.messages:,} messages, Pub/Sub emulator on 127.0.0.1, one process each")
    print(f"  baseline (bare subscriber, ack only): {base:10,.0f} messages/s")
    print(f"  Sluice into DuckDB (local runner):    {sluice:10,.0f} messages/s   ratio {sluice / base:.3f}"
          "   (from process start)")
    print(f"  Sluice, after its first row:          {steady:10,.0f} messages/s   ratio {steady / base:.3f}")
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"publish-to-row latency at {args.rate:g} messages/s for {args.seconds:g} s ({len(latencies)} rows, "
          "max_buffering_seconds 1):")
    print(f"  p50 {statistics.median(latencies) / 1000:.2f} s, p95 {p95 / 1000:.2f} s, "
          f"max {latencies[-1] / 1000:.2f} s")


if __name__ == "__main__":
    main()
