"""SpoolSink on a real directory: group commit, rotation, recovery after a kill, faults."""
import asyncio
import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.sinks import SinkUnavailable
from collector.sinks.spool import SpoolSink

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^\d{8}T\d{6}-\d+-\d{6}\.jsonl$")


def record(task: int, seq: int, pad: int = 0) -> bytes:
    return json.dumps({"batch": [{"type": "track", "event": "E", "userId": f"u{task}",
                                  "messageId": f"{task}-{seq}"}], "source": "web", "pad": "x" * pad},
                      separators=(",", ":")).encode()


def spooled(directory: Path) -> list:
    """Every line of the closed files, in name order, parsed (a torn line fails the test)."""
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), path
        lines += [json.loads(line) for line in data.splitlines()]
    return lines


def ids(lines) -> list:
    return [line["batch"][0]["messageId"] for line in lines]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def durable(monkeypatch):
    """The lines of every regular file as they stood at each fsync (what a crash would keep)."""
    seen, real = set(), os.fsync

    def fsync(fd):
        real(fd)
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size:
            with open(f"/proc/self/fd/{fd}", "rb") as file:  # the sink's fd is write-only
                seen.update(file.read(info.st_size).splitlines())
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_concurrent_puts_share_commits_and_each_returns_only_once_fsynced(tmp_path, durable):
    tasks, puts = 300, 10
    sink = SpoolSink(tmp_path)

    async def client(task):
        for seq in range(puts):
            data = record(task, seq)
            records = [data] if seq % 3 else [data, record(task, seq + 1000)]  # some puts hold two
            await sink.put(records)
            assert all(r in durable for r in records)  # released only after the fsync covering it

    async def main():
        await sink.start()
        await asyncio.gather(*(client(t) for t in range(tasks)))
        commits = sink._group.commits
        await sink.close()
        return commits
    commits = run(main())
    lines = spooled(tmp_path)
    expected = {f"{t}-{s}" for t in range(tasks) for s in range(puts)}
    expected |= {f"{t}-{s + 1000}" for t in range(tasks) for s in range(puts) if not s % 3}
    assert sorted(ids(lines)) == sorted(expected)  # each exactly once, every line whole
    assert commits < tasks * puts / 20, commits  # grouped: far fewer fsyncs than puts
    for task in range(5):  # a task's records stay in the order it put them
        mine = [i for i in ids(lines) if i.startswith(f"{task}-") and int(i.split("-")[1]) < 1000]
        assert mine == [f"{task}-{s}" for s in range(puts)]
    assert not list(tmp_path.glob("*.open"))
    assert all(NAME.match(p.name) for p in tmp_path.glob("*.jsonl"))


def test_files_rotate_by_size_with_names_sorted_by_time(tmp_path):
    sink = SpoolSink(tmp_path, max_bytes=1000)

    async def main():
        await sink.start()
        for seq in range(40):
            await sink.put([record(0, seq, pad=100)])  # ~190 bytes each
        await sink.close()
    run(main())
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) >= 8 and all(p.stat().st_size <= 1000 for p in files)
    assert ids(spooled(tmp_path)) == [f"0-{s}" for s in range(40)]  # name order is write order
    assert files == list(sink.closed_files) and sink.files_closed == len(files)
    pid = str(os.getpid())
    assert all(NAME.match(p.name) and p.name.split("-")[1] == pid for p in files)


def test_the_closed_files_remembered_are_the_latest_few(tmp_path, monkeypatch):
    """A collector closes a file every few seconds for weeks: the sink keeps the latest names
    (collector.sinks.spool.RECENT_NAMES) and a count, not every name."""
    from collector.sinks import spool
    monkeypatch.setattr(spool, "RECENT_NAMES", 3)
    sink = SpoolSink(tmp_path, max_bytes=1)   # a file per put

    async def main():
        await sink.start()
        for seq in range(7):
            await sink.put([record(0, seq)])
        await sink.close()
    run(main())
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == sink.files_closed == 7 and list(sink.closed_files) == files[-3:]


def test_a_file_is_closed_by_age_with_no_further_puts(tmp_path):
    sink = SpoolSink(tmp_path, max_age_seconds=0.3)

    async def main():
        await sink.start()
        await sink.put([record(0, 0)])
        assert [p.suffix for p in tmp_path.iterdir()] == [".open"]
        await asyncio.sleep(0.9)
        closed = sorted(p.name for p in tmp_path.iterdir())
        await sink.put([record(0, 1)])  # a new file
        await sink.close()
        return closed
    closed = run(main())
    assert len(closed) == 1 and closed[0].endswith(".jsonl")
    assert len(list(tmp_path.glob("*.jsonl"))) == 2 and ids(spooled(tmp_path)) == ["0-0", "0-1"]


def test_start_closes_what_a_killed_sink_left_open(tmp_path):
    """Simulated kill: a .open file ending in a torn line; one holding nothing whole; and one
    a live sink holds (flock), which must be left alone."""
    whole = record(1, 1) + b"\n" + record(1, 2) + b"\n"
    (tmp_path / "20260101T000000-7-000001.jsonl.open").write_bytes(whole + record(1, 3)[:25])
    (tmp_path / "20260101T000001-7-000002.jsonl.open").write_bytes(record(2, 1)[:30])
    live = SpoolSink(tmp_path / "x")  # placeholder, replaced below

    async def main():
        nonlocal live
        live = SpoolSink(tmp_path)
        await live.start()  # recovers both leftovers
        await live.put([record(3, 1)])  # its own file stays open
        after = SpoolSink(tmp_path)
        await after.start()  # a second sink must not touch the live file
        still_open = [p.name for p in tmp_path.glob("*.open")]
        await after.close()
        await live.close()
        return still_open
    still_open = run(main())
    assert len(still_open) == 1 and str(os.getpid()) in still_open[0]
    assert (tmp_path / "20260101T000000-7-000001.jsonl").read_bytes() == whole
    assert not (tmp_path / "20260101T000001-7-000002.jsonl").exists()  # nothing whole: removed
    assert ids(spooled(tmp_path)) == ["1-1", "1-2", "3-1"]


def test_sinks_starting_beside_a_live_one_never_take_its_files(tmp_path):
    """Sinks sharing a directory (server workers, a restart overlapping the old process): each
    start recovers .open files, racing the live sink that creates a new file for nearly every
    commit. flock and an inode check keep the live files out of reach: nothing acknowledged
    is lost or torn."""
    writer = SpoolSink(tmp_path, max_bytes=300)  # ~2 records a file: new files all the time
    acked, done = [], False

    async def client(task):
        for seq in range(40):
            await writer.put([record(task, seq)])
            acked.append(f"{task}-{seq}")

    async def restarts():
        count = 0
        while not done:
            other = SpoolSink(tmp_path)
            await other.start()
            await other.close()
            count += 1
        return count

    async def main():
        nonlocal done
        await writer.start()
        racing = asyncio.ensure_future(restarts())
        await asyncio.gather(*(client(t) for t in range(25)))
        done = True
        count = await racing
        await writer.close()
        return count
    assert run(main()) > 5
    assert sorted(ids(spooled(tmp_path))) == sorted(acked) and len(acked) == 1000
    assert not list(tmp_path.glob("*.open"))


KILLED_WRITER = """
import asyncio, json, sys
from collector.sinks.spool import SpoolSink

async def main():
    sink = SpoolSink(sys.argv[1], max_bytes=20000)
    await sink.start()
    async def client(task):
        for seq in range(100000):
            data = json.dumps({"batch": [{"messageId": f"{task}-{seq}"}], "pad": "x" * 200}).encode()
            await sink.put([data])
            print(f"{task}-{seq}", flush=True)
    await asyncio.gather(*(client(t) for t in range(50)))
asyncio.run(main())
"""


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path):
    """A real kill -9 of a process putting from 50 tasks: after restart, every record whose put
    had returned is in a closed file, and every line is whole."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 3000 and time.monotonic() < deadline:
        acked.append(writer.stdout.readline().decode().strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acked += [line.decode().strip() for line in writer.stdout.read().splitlines()]
    writer.stdout.close()
    assert len(acked) >= 3000  # (nearly always with a file left open: unless killed between two files)

    async def restart():
        sink = SpoolSink(tmp_path)
        await sink.start()
        await sink.close()
    run(restart())
    assert not list(tmp_path.glob("*.open"))
    stored = [line["batch"][0]["messageId"] for line in spooled(tmp_path)]
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored)


class Faults:
    """os.fsync / os.write failing on regular files while `failing` is set: faults a real disk
    cannot produce on demand."""

    def __init__(self, monkeypatch):
        self.fsync_error = self.write_error = None
        self.real_fsync, self.real_write = os.fsync, os.write
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "write", self.write)

    @staticmethod
    def _regular(fd):
        return stat.S_ISREG(os.fstat(fd).st_mode)

    def fsync(self, fd):
        if self.fsync_error is not None and self._regular(fd):
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        return self.real_fsync(fd)

    def write(self, fd, data):
        if self.write_error is not None and self._regular(fd) and len(data) > 1:
            self.real_write(fd, bytes(data[:len(data) // 2]))  # half lands, then the disk is full
            self.write_error, error = None, self.write_error
            self.pending_error = error
            return len(data) // 2
        error = getattr(self, "pending_error", None)
        if error is not None and self._regular(fd):
            self.pending_error = None
            raise OSError(error, os.strerror(error))
        return self.real_write(fd, data)


def test_a_failed_fsync_answers_unavailable_then_the_sink_recovers(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        await sink.put([record(0, 0)])
        faults.fsync_error = errno.EIO
        results = await asyncio.gather(*(sink.put([record(1, s)]) for s in range(20)), return_exceptions=True)
        assert all(isinstance(r, SinkUnavailable) for r in results), results
        assert not await sink.ready()
        faults.fsync_error = None
        await asyncio.sleep(0.6)  # past the cached answer
        assert await sink.ready()  # a probe write and fsync succeed again
        await asyncio.gather(*(sink.put([record(2, s)]) for s in range(20)))
        await sink.close()
    run(main())
    # the failed puts' records were cut away (never acknowledged); the first file kept what was
    assert sorted(ids(spooled(tmp_path))) == sorted(["0-0"] + [f"2-{s}" for s in range(20)])
    assert not list(tmp_path.glob("*.open"))


def test_an_fsync_failing_on_and_on_keeps_answering_unavailable(tmp_path, monkeypatch):
    """While the fault lasts even closing the abandoned file fails; it is closed (at its durable
    length) as soon as writes work again."""
    faults = Faults(monkeypatch)
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        await sink.put([record(0, 0)])
        faults.fsync_error = errno.EIO
        for seq in range(3):
            with pytest.raises(SinkUnavailable, match="Input/output error"):
                await sink.put([record(1, seq)])
        faults.fsync_error = None
        await sink.put([record(2, 0)])
        await sink.close()
    run(main())
    assert ids(spooled(tmp_path)) == ["0-0", "2-0"]
    assert not list(tmp_path.glob("*.open"))


def test_a_full_disk_answers_unavailable_and_leaves_no_torn_line(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        await sink.put([record(0, 0)])
        faults.write_error = errno.ENOSPC
        with pytest.raises(SinkUnavailable, match="disk is full"):
            await sink.put([record(1, 0), record(1, 1)])
        await sink.put([record(2, 0)])
        await sink.close()
    run(main())
    assert ids(spooled(tmp_path)) == ["0-0", "2-0"]


FILE_SIZE_LIMITED = """
import asyncio, json, resource, signal, sys
from collector.sinks import SinkUnavailable
from collector.sinks.spool import SpoolSink

def record(i):
    return json.dumps({"batch": [{"messageId": str(i)}], "pad": "x" * 1000}).encode()

async def main():
    sink = SpoolSink(sys.argv[1])
    await sink.start()
    await sink.put([record(0)])
    resource.setrlimit(resource.RLIMIT_FSIZE, (2500, resource.RLIM_INFINITY))
    try:
        await sink.put([record(1), record(2)])
        print("accepted")
    except SinkUnavailable as exc:
        print("unavailable:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    await sink.put([record(3)])
    await sink.close()

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead
asyncio.run(main())
"""


def test_a_real_short_write_answers_unavailable_and_leaves_no_torn_line(tmp_path):
    """A fault the kernel produces: past RLIMIT_FSIZE a write lands in part, then fails (EFBIG).
    The commit's callers get SinkUnavailable, the file is cut back to what was fsynced, and
    once the limit is lifted the sink takes records again."""
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(tmp_path)], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("unavailable: the spool cannot write: File too large")
    assert [line["batch"][0]["messageId"] for line in spooled(tmp_path)] == ["0", "3"]
    assert not list(tmp_path.glob("*.open"))


def test_a_record_with_a_newline_is_refused_loudly(tmp_path):
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        for bad in ([b'{"a":\n1}'], [b""], ["text"], [record(0, 0), b"x\ny"]):
            with pytest.raises(ValueError):
                await sink.put(bad)
        await sink.close()
    run(main())
    assert spooled(tmp_path) == []  # nothing of a refused put was written


def test_close_finishes_pending_puts_then_refuses(tmp_path, monkeypatch):
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.05), real(fd)))  # a slow disk
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        puts = [asyncio.ensure_future(sink.put([record(0, s)])) for s in range(200)]
        await asyncio.sleep(0)  # all queued
        await sink.close()
        assert all(p.done() and p.exception() is None for p in puts)
        with pytest.raises(SinkUnavailable):
            await sink.put([record(1, 0)])
        assert not await sink.ready()
    run(main())
    assert len(spooled(tmp_path)) == 200 and not list(tmp_path.glob("*.open"))


def test_a_stalled_disk_and_a_backlog_answer_unavailable(tmp_path, monkeypatch):
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.5), real(fd)))
    sink = SpoolSink(tmp_path, timeout=0.2, max_pending_bytes=2000)

    async def main():
        await sink.start()
        results = await asyncio.gather(*(sink.put([record(0, s, pad=100)]) for s in range(30)),
                                       return_exceptions=True)
        messages = [str(r) for r in results]
        assert any("behind" in m for m in messages) and any("did not confirm" in m for m in messages)
        await sink.close()
    run(main())
    # timed-out puts may still land (at least once); refused ones never do
    assert len(spooled(tmp_path)) < 30


def test_a_nearly_full_disk_is_not_ready(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    roomy, cramped = SpoolSink(tmp_path), SpoolSink(tmp_path, min_free_bytes=free * 2)

    async def main():
        assert not await roomy.ready()  # not started
        await roomy.start()
        await cramped.start()
        answers = await roomy.ready(), await cramped.ready()
        await roomy.close()
        await cramped.close()
        return answers
    assert run(main()) == (True, False)


def test_every_sink_takes_the_attributes_the_server_may_pass(tmp_path):
    """Sink.put(records, attributes=None) is the interface: the server hands the Pub/Sub sink the
    request's attributes, and a sink whose put lacked the keyword would fail every request given
    one (a TypeError, a 500). The spool keeps the record as given, never the attributes."""
    import inspect

    import collector.embedded  # noqa: F401  (EmbeddedSink, GcsSink and PubSubSink, as Sink's subclasses)
    import collector.sinks.pubsub  # noqa: F401
    from collector.sinks import Sink

    def subclasses(cls):
        return [c for sub in cls.__subclasses__() for c in [sub, *subclasses(sub)]]
    # the project's sinks, not a test's fake that another module of this process may define
    found = {cls.__name__: cls for cls in [Sink, *subclasses(Sink)] if cls.__module__.startswith("collector.")}
    assert {"Sink", "SpoolSink", "GcsSink", "PubSubSink", "EmbeddedSink"} <= set(found)
    for name, cls in found.items():
        parameter = inspect.signature(cls.put).parameters.get("attributes")
        assert parameter is not None and parameter.default is None, name
    sink = SpoolSink(tmp_path)

    async def main():
        await sink.start()
        await sink.put([record(0, 0), record(0, 1)], [{"source": "web", "received_at": "2026-12-02T10:00:00.000Z",
                                                      "content_type": "text/plain"}] * 2)
        await sink.close()
    run(main())
    assert [path.read_bytes() for path in tmp_path.glob("*.jsonl")] == [record(0, 0) + b"\n" + record(0, 1) + b"\n"]
