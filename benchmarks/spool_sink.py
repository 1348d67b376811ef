"""The spool sink's group commit: records/s for 1-record puts from many concurrent tasks.

    python benchmarks/spool_sink.py [--tasks 200] [--seconds 5] [--record-bytes 600] [--dir PATH]
                                    [--loop asyncio|uvloop]

`--tasks` coroutines each put one record at a time, awaiting each put (as the server does:
one put per request), for `--seconds`, fsync on, into a fresh directory (default: a temporary
one on the disk holding /tmp; give --dir to measure another disk). Prints records/s, commits,
records per commit (the group size), put latency p50/p99, and fsyncs/s measured alone (one
writer, 1 record per fsync): the disk's ceiling without group commit.
"""
import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.sinks.spool import SpoolSink  # noqa: E402


async def measure(directory: Path, tasks: int, seconds: float, record: bytes) -> dict:
    sink = SpoolSink(directory)
    await sink.start()
    latencies, stop = [], time.monotonic() + seconds

    async def client():
        while time.monotonic() < stop:
            began = time.perf_counter()
            await sink.put([record])
            latencies.append(time.perf_counter() - began)

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(tasks)))
    elapsed = time.monotonic() - began
    commits = sink._group.commits
    await sink.close()
    lines = sum(sum(1 for _ in open(p, "rb")) for p in directory.glob("*.jsonl"))
    assert lines == len(latencies), (lines, len(latencies))
    latencies.sort()
    return {"records": len(latencies), "records_per_s": len(latencies) / elapsed, "commits": commits,
            "per_commit": len(latencies) / max(commits, 1),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1]}


def fsyncs_per_second(directory: Path, record: bytes, seconds: float = 2.0) -> float:
    fd = os.open(directory / "alone.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    count, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        os.write(fd, record + b"\n")
        os.fsync(fd)
        count += 1
    os.close(fd)
    os.unlink(directory / "alone.bin")
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--record-bytes", type=int, default=600)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    record = (b'{"batch":[{"type":"track","event":"Clicked","userId":"u","properties":{"p":"'
              + b"x" * max(0, args.record_bytes - 110) + b'"}}],"source":"web"}')
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        alone = fsyncs_per_second(directory, record)
        if args.loop == "uvloop":
            import uvloop
            result = uvloop.run(measure(directory / "spool", args.tasks, args.seconds, record))
        else:
            result = asyncio.run(measure(directory / "spool", args.tasks, args.seconds, record))
    print(f"{args.tasks} tasks, 1-record puts of {len(record)} bytes, fsync on, {args.loop}:")
    print(f"  {result['records_per_s']:,.0f} records/s ({result['records']:,} in {args.seconds:g} s), "
          f"{result['commits']:,} commits, {result['per_commit']:.1f} records per commit")
    print(f"  put latency p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    print(f"  the disk alone: {alone:,.0f} fsyncs/s (one record per write+fsync, no group commit)")


if __name__ == "__main__":
    main()
