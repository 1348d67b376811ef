"""Spooled newline-delimited JSON: a local directory (SpoolSink) or gs://BUCKET/PREFIX (GcsSink).

Both group-commit: the `put` calls made while a commit is running wait together and go out as
the next commit (one write and one fsync for a directory, one object for GCS), run in a
worker thread so the event loop keeps serving. A caller is released only once the commit that
holds its records has succeeded; when it fails, every caller of that commit gets
SinkUnavailable (the collector answers 503, the SDKs retry), and the next commit starts
afresh, so the sink works again as soon as the cause is gone.

Local files: `DIR/<YYYYMMDDTHHMMSS>-<pid>-<seq>.jsonl.open` while written (locked with flock),
renamed to `.jsonl` when closed (by size, by age, on close) and the directory fsynced, so
`--input_files 'DIR/*.jsonl'` only ever sees whole files. A new file's directory entry is
fsynced before its first record is acknowledged. On start, `.open` files nobody holds (a
killed predecessor's) are cut after their last complete line, fsynced and closed.

GCS: each commit is one object `PREFIX/<YYYYMMDDTHHMMSS>-<pid>-<instance>-<seq>.jsonl`, created
with ifGenerationMatch=0 (never overwrites), and a caller is released once GCS has answered
the upload. Commits start at most every `commit_interval` seconds (200 ms), which gathers the
puts of that window into one object. Staging locally and uploading on rotation would not do:
Cloud Run's disk is memory, so an instance that dies loses what it staged, and a 2xx must
mean the records survive the instance. See docs/collector.md ("Sinks").
"""
import asyncio
import base64
import errno
import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from collector.sinks import Sink, SinkUnavailable

log = logging.getLogger(__name__)

OPEN_SUFFIX = ".open"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024      # rotate a file past 64 MB
DEFAULT_MAX_AGE_SECONDS = 60.0            # ... or 60 s after it was opened (embedded: 2 s)
DEFAULT_TIMEOUT_SECONDS = 8.0             # a put waits at most this: SDKs time out at 10-15 s
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024  # waiting + in-flight bytes before puts are refused


def check_records(records) -> int:
    """The records' total size; a record that is not non-empty bytes without a newline is a bug
    in the caller (it would split into two lines, or none): ValueError, loudly."""
    total = 0
    for record in records:
        if not isinstance(record, (bytes, bytearray)):
            raise ValueError(f"a record must be bytes, got {type(record).__name__}")
        if not record:
            raise ValueError("a record must not be empty")
        if b"\n" in record:
            raise ValueError("a record must be one line: it holds a newline (a bug in the caller)")
        total += len(record)
    return total


# How many of the latest closed files (spool) or objects (GCS) a sink remembers, for tests and
# debugging: a collector runs for weeks, closing a file every few seconds.
RECENT_NAMES = 100


class GroupCommit:
    """Gathers the puts of one event loop into commits, run one at a time in a worker thread.

    commit(records) runs in the thread and raises to fail every record of that commit. While a
    commit runs, new puts queue for the next one; a commit starts at least `interval` seconds
    after the previous one started (0: at once)."""

    def __init__(self, commit: Callable[[list], None], name: str, *, interval: float = 0.0,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                 describe: Callable[[BaseException], str] = str):
        self._commit, self._interval, self._timeout = commit, interval, timeout
        self._max_pending_bytes, self._describe = max_pending_bytes, describe
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._records, self._waiters, self._bytes = [], [], 0  # waiting for the next commit
        self._in_flight_bytes = 0
        self._task: Optional[asyncio.Task] = None
        self._last_start = float("-inf")
        self.commits = 0  # how many commits ran (tests and metrics read it)

    async def put(self, records: list, size: int) -> None:
        if self._bytes + self._in_flight_bytes + size > self._max_pending_bytes and (self._bytes or self._in_flight_bytes):
            raise SinkUnavailable(f"the sink is behind: {self._bytes + self._in_flight_bytes} bytes waiting", 1)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._waiters:
            # One deadline per commit, not per put (a timer per put was half the CPU of a put):
            # the group expires together once its first put has waited `timeout`.
            loop.call_later(self._timeout, self._expire, self._waiters)
        self._records.extend(records)
        self._waiters.append(waiter)
        self._bytes += size
        if self._task is None:
            self._task = loop.create_task(self._run())
        # A caller cancelled (its client went away) cancels only its own waiter: the commit goes
        # on, and its records may still land (at least once).
        await waiter

    def _expire(self, waiters: list) -> None:
        """A group still unconfirmed at its deadline: its callers get SinkUnavailable. Not yet
        started, it is dropped (never written: the SDKs' retries bring no duplicates); running,
        it goes on and its records may still land (at least once)."""
        if waiters is self._waiters and waiters:
            self._records, self._waiters, self._bytes = [], [], 0
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(SinkUnavailable(f"the sink did not confirm within {self._timeout:g} s", 1))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                wait = self._last_start + self._interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if not self._waiters:
                        break  # expired while waiting for its turn
                records, waiters, size = self._records, self._waiters, self._bytes
                self._records, self._waiters, self._bytes = [], [], 0
                self._in_flight_bytes = size
                self._last_start = loop.time()
                try:
                    await loop.run_in_executor(self.executor, self._commit, records)
                    self.commits += 1
                    failure = None
                except Exception as exc:  # noqa: BLE001 - every failure fails the commit's callers
                    failure = exc
                finally:
                    self._in_flight_bytes = 0
                for waiter in waiters:
                    if waiter.done():
                        continue
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(failure if isinstance(failure, SinkUnavailable)
                                             else SinkUnavailable(self._describe(failure)))
        finally:
            self._task = None

    async def drain(self) -> None:
        """Wait until every queued put has been committed (or failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def run(self, fn, *args):
        """fn(*args) in the commit thread, between commits."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the spool's disk is full"
    if isinstance(exc, OSError):
        return f"the spool cannot write: {exc.strerror or exc}"
    return f"the spool cannot write: {type(exc).__name__}: {exc}"


def _last_line_end(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """The offset just past the file's last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        found = block.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def recover_open_file(path: Path, keep: Optional[int] = None) -> Optional[Path]:
    """Close a `.jsonl.open` file nobody writes: cut it after its last complete line (or at
    `keep` bytes, what its writer knew to be durable), fsync, rename to `.jsonl` (removed when
    nothing is left), fsync the directory. None when another process holds it (a live sink)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # closed by its writer meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        if not _names(path, fd):
            return None  # its writer closed and renamed it between our open and our lock
        size = os.fstat(fd).st_size
        cut = _last_line_end(fd, size) if keep is None else min(keep, size)
        if cut != size:
            os.ftruncate(fd, cut)
            log.warning("spool: %s ended in %d bytes no put was confirmed for; cut", path.name, size - cut)
        os.fsync(fd)
        closed = path.with_name(path.name[:-len(OPEN_SUFFIX)])
        try:
            if cut == 0:
                os.unlink(path)
                closed = None
            else:
                os.rename(path, closed)
        except FileNotFoundError:
            return None  # another sink's start closed it meanwhile
        _fsync_directory(path.parent)
        return closed
    finally:
        os.close(fd)


class SpoolSink(Sink):
    """Records appended to rotated files in a local directory, each put fsynced (group commit)."""

    def __init__(self, directory, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, min_free_bytes: int = 1024 * 1024):
        self.directory = Path(directory)
        self.max_bytes, self.max_age_seconds, self.min_free_bytes = max_bytes, max_age_seconds, min_free_bytes
        self._group = GroupCommit(self._commit, "spool", timeout=timeout, max_pending_bytes=max_pending_bytes,
                                  describe=_describe_os_error)
        self._pid = os.getpid()
        self._seq = 0
        self._fd: Optional[int] = None      # the open file (only the commit thread touches these)
        self._path: Optional[Path] = None
        self._size = 0                      # bytes of the open file known durable
        self._opened = 0.0                  # monotonic time it was opened
        self._leftovers: dict = {}          # path -> durable size: files a failure left open
        self._healthy = True                # the last commit (or probe) succeeded
        self._probed = (float("-inf"), False)
        self._started = self._closing = False
        self._ager: Optional[asyncio.Task] = None
        self.closed_files = deque(maxlen=RECENT_NAMES)   # the latest files this sink closed, in order
        self.files_closed = 0                            # and how many it closed in all

    # -- the loop's side --------------------------------------------------------------------
    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        recovered = await self._group.run(self._recover_all)
        if recovered:
            log.warning("spool: closed %d file(s) a previous process left open: %s", len(recovered),
                        ", ".join(p.name for p in recovered))
        self._started = True
        self._ager = asyncio.get_running_loop().create_task(self._age_files())

    async def put(self, records: list, attributes: Optional[list] = None) -> None:
        """`attributes` is ignored: the record's envelope holds source and receivedAt."""
        size = check_records(records)
        if not self._started or self._closing:
            raise SinkUnavailable("the spool is closed" if self._closing else "the spool is not started")
        if records:
            await self._group.put(records, size)

    async def ready(self) -> bool:
        if not self._started or self._closing:
            return False
        if self._healthy:
            try:
                stats = os.statvfs(self.directory)  # a full disk is not ready before a put fails
            except OSError:
                return False
            return stats.f_bavail * stats.f_frsize >= self.min_free_bytes
        loop = asyncio.get_running_loop()
        at, answer = self._probed
        if loop.time() - at < 0.5:  # a probe at most twice a second, however often /ready is asked
            return answer
        try:
            answer = await asyncio.wait_for(self._group.run(self._probe), 2.0)
        except (asyncio.TimeoutError, OSError):
            answer = False
        self._probed = (loop.time(), answer)
        return answer

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._group.drain()
        if self._ager is not None:
            self._ager.cancel()
            try:
                await self._ager
            except asyncio.CancelledError:
                pass
        await self._group.run(self._close_file)
        self._group.shutdown()

    async def _age_files(self) -> None:
        tick = min(1.0, max(0.05, self.max_age_seconds / 4))
        while True:
            await asyncio.sleep(tick)
            if self._fd is not None and time.monotonic() - self._opened >= self.max_age_seconds:
                try:
                    await self._group.run(self._rotate_if_old)
                except Exception:  # noqa: BLE001 - the next commit reports and recovers
                    log.exception("spool: closing %s failed", self._path)

    # -- the commit thread's side -----------------------------------------------------------
    def _recover_all(self) -> list:
        closed = []
        for path in sorted(self.directory.glob("*.jsonl" + OPEN_SUFFIX)):
            done = recover_open_file(path)
            if done is not None:
                closed.append(done)
        return closed

    def _open_file(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            self._seq += 1
            name = f"{stamp}-{self._pid}-{self._seq:06d}.jsonl"
            if (self.directory / name).exists():
                continue  # a predecessor with our pid (a container's pid 1) in the same second
            path = self.directory / (name + OPEN_SUFFIX)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # recovery by another process skips it
            except BlockingIOError:
                os.close(fd)  # another sink starting took it for a killed one's (it removes it, empty)
                continue
            if not _names(path, fd):
                os.close(fd)  # ... and already removed it
                continue
            break
        try:
            _fsync_directory(self.directory)  # the file's name survives a crash before its records are acked
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self._fd, self._path, self._size, self._opened = fd, path, 0, time.monotonic()

    def _close_file(self, keep: Optional[int] = None) -> None:
        """Give the open file its final name (removed when empty), the directory fsynced, then
        close it: the lock is held throughout, so a sink starting beside this one never takes
        the file for a killed one's. `keep`: cut it to that length first (after a failure)."""
        if self._fd is None:
            return
        fd, path, size = self._fd, self._path, self._size
        self._fd = self._path = None
        closed = path.with_name(path.name[:-len(OPEN_SUFFIX)])
        try:
            if keep is not None:
                os.ftruncate(fd, keep)
                os.fsync(fd)
            if (keep if keep is not None else size) == 0:
                os.unlink(path)
                closed = None
            else:
                os.rename(path, closed)
            _fsync_directory(self.directory)
        except OSError:
            if path.exists():
                self._leftovers[path] = size  # closed before a later commit, or by the next start
            raise
        finally:
            os.close(fd)
        if closed is not None:
            self.closed_files.append(closed)
            self.files_closed += 1

    def _rotate_if_old(self) -> None:
        if self._fd is not None and time.monotonic() - self._opened >= self.max_age_seconds:
            self._close_file()

    def _abandon(self) -> None:
        """After a failed write or fsync: close the file at the length known durable (what
        follows was never acknowledged, and after a failed fsync the kernel may have dropped
        it); if even that fails, it is tried again before each later commit."""
        try:
            self._close_file(keep=self._size)
        except OSError:
            pass

    def _close_leftovers(self) -> None:
        for path, size in list(self._leftovers.items()):
            try:
                closed = recover_open_file(path, keep=size)
            except FileNotFoundError:
                closed = None
            except OSError:
                continue  # still failing: try again before the next commit
            del self._leftovers[path]
            if closed is not None:
                self.closed_files.append(closed)
                self.files_closed += 1

    def _commit(self, records: list) -> None:
        data = b"\n".join(records) + b"\n"
        try:
            if self._leftovers:
                self._close_leftovers()
            if self._fd is not None and self._size and self._size + len(data) > self.max_bytes:
                self._close_file()
            if self._fd is None:
                self._open_file()
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except BaseException:
            self._healthy = False
            if self._fd is not None:
                self._abandon()
            raise
        self._size += len(data)
        self._healthy = True
        if self._size >= self.max_bytes or time.monotonic() - self._opened >= self.max_age_seconds:
            try:
                self._close_file()
            except OSError:
                log.exception("spool: closing %s failed", self._path)

    def _probe(self) -> bool:
        """Whether the directory takes a write and an fsync now (after a failure)."""
        stats = os.statvfs(self.directory)
        if stats.f_bavail * stats.f_frsize < self.min_free_bytes:
            return False
        path = self.directory / f".probe-{self._pid}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
        if self._leftovers:
            self._close_leftovers()
        self._healthy = True
        return True


class GcsSink(Sink):
    """Each group commit uploaded as one object under gs://BUCKET/PREFIX; a put returns once
    GCS has confirmed the object holding its records."""

    def __init__(self, url: str, *, commit_interval: float = 0.2, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, client=None):
        if not url.startswith("gs://") or len(url) <= 5:
            raise ValueError(f"not a gs://BUCKET/PREFIX URL: {url!r}")
        self.bucket_name, _, prefix = url[5:].partition("/")
        if not self.bucket_name:
            raise ValueError(f"no bucket in {url!r}")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._client, self._bucket = client, None
        # the upload's own deadline sits inside the put's, so a put's 503 means the upload gave up
        self._upload_timeout = max(1.0, timeout - 1.0)
        self._group = GroupCommit(self._commit, "gcs-spool", interval=commit_interval, timeout=timeout,
                                  max_pending_bytes=max_pending_bytes,
                                  describe=lambda exc: f"GCS did not take the records: {type(exc).__name__}: {exc}")
        self._pid, self._instance = os.getpid(), uuid.uuid4().hex[:8]
        self._seq = 0
        self._ready_cache = (float("-inf"), False)
        self._started = self._closing = False
        self.objects = deque(maxlen=RECENT_NAMES)   # names of the latest objects this sink wrote, in order
        self.objects_written = 0                    # and how many it wrote in all

    async def start(self) -> None:
        if self._client is None:
            self._client = await self._group.run(_storage_client)
        self._bucket = self._client.bucket(self.bucket_name)
        self._started = True

    async def put(self, records: list, attributes: Optional[list] = None) -> None:
        """`attributes` is ignored: the record's envelope holds source and receivedAt."""
        size = check_records(records)
        if not self._started or self._closing:
            raise SinkUnavailable("the sink is closed" if self._closing else "the sink is not started")
        if records:
            await self._group.put(records, size)

    async def ready(self) -> bool:
        if not self._started or self._closing:
            return False
        loop = asyncio.get_running_loop()
        at, answer = self._ready_cache
        if loop.time() - at < 5.0:
            return answer
        try:
            answer = await asyncio.wait_for(loop.run_in_executor(None, self._bucket_reachable), 3.0)
        except Exception:  # noqa: BLE001 - unreachable, whatever the reason
            answer = False
        self._ready_cache = (loop.time(), answer)
        return answer

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._group.drain()
        self._group.shutdown()

    def _bucket_reachable(self) -> bool:
        from google.api_core import exceptions
        try:
            # retry=None: the default retry goes on for 120 s behind ready()'s 3 s wait, so while
            # GCS was down each probe left a thread retrying in the default executor (the Pub/Sub
            # sink's probe is the same)
            return self._bucket.exists(timeout=2.0, retry=None)
        except exceptions.Forbidden:
            return True  # GCS answered; a least-privilege account may create objects without reading the bucket

    def _name(self) -> str:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return f"{self.prefix}{stamp}-{self._pid}-{self._instance}-{self._seq:06d}.jsonl"

    def _commit(self, records: list) -> None:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        data = b"\n".join(records) + b"\n"
        retry = DEFAULT_RETRY.with_deadline(self._upload_timeout)
        for _ in range(5):
            name = self._name()
            blob = self._bucket.blob(name)
            try:
                # ifGenerationMatch=0: created, never overwritten, and so safe to retry
                blob.upload_from_string(data, content_type="application/x-ndjson", if_generation_match=0,
                                        timeout=self._upload_timeout, retry=retry)
            except exceptions.PreconditionFailed:
                if _same_content(self._bucket.get_blob(name, timeout=self._upload_timeout), data):
                    break  # a retried upload whose first answer was lost: it is there
                continue   # the name is taken by something else: take the next one
            break
        else:
            raise SinkUnavailable("GCS refused 5 new object names (ifGenerationMatch=0 failed)")
        self.objects.append(name)
        self.objects_written += 1


def _same_content(blob, data: bytes) -> bool:
    if blob is None or blob.size != len(data):
        return False
    if blob.md5_hash:
        return blob.md5_hash == base64.b64encode(hashlib.md5(data).digest()).decode()
    return True


def _storage_client():
    from google.cloud import storage
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "sluice-emulator"))
    return storage.Client()
