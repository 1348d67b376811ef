"""A real collector for tests: `python -m pipeline serve` started as a process of its own on
127.0.0.1, port 0 (the port read from its start line), ready once GET /health answers, and
stopped with SIGTERM, which must end it with status 0. tests/collector/conftest.py makes
fixtures of it; the SDK tests reuse them."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"collector listening on (http://\S+?),")

SOURCES = [
    {"name": "web", "write_key": "key-web", "allowed_origins": ["https://shop.example.com"]},
    {"name": "server", "write_key": "key-server", "rate_limit": {"events_per_second": 1000000, "burst": 1000000}},
    {"name": "tight", "write_key": "key-tight", "rate_limit": {"events_per_second": 1, "burst": 5}},
    {"name": "off", "write_key": "key-off", "enabled": False},
]


def write_config(directory, sources=None, collector=None, extra: str = "", debugger=None) -> Path:
    """A config file holding `sources` (default SOURCES), a `collector:` and a `debugger:` section."""
    document = {"sources": SOURCES if sources is None else sources}
    if collector:
        document["collector"] = collector
    if debugger is not None:
        document["debugger"] = debugger
    path = Path(directory) / "collector.yaml"
    path.write_text(json.dumps(document, indent=1) + "\n" + extra)   # JSON is YAML
    return path


class Collector:
    """One `python -m pipeline serve` process. `url` is its base URL once started."""

    def __init__(self, args: list, directory, env: dict = None, command: list = None):
        self.log_path = Path(directory) / f"collector-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        command = command or [sys.executable, "-m", "pipeline", "serve"]
        self.process = subprocess.Popen(command + list(args) + ["--host", "127.0.0.1", "--port", "0"],
                                        cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        self.url = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> "Collector":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the collector exited {self.process.returncode} before answering:\n{self.log()}")
            if self.url is None:
                found = LISTENING.search(self.log())
                if found:
                    self.url = found.group(1)
            if self.url is not None:
                try:
                    with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                        if answer.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.05)
        raise AssertionError(f"the collector did not answer /health within {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (killed after `timeout` seconds: a test failure)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the collector did not stop within {timeout:.0f} s of SIGTERM:\n{self.log()}")
        self._log.close()
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def status_kb(self, field: str) -> int:
        """A memory figure of the process from /proc/PID/status (VmRSS, VmHWM...), in KB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def rss_peak_kb(self) -> int:
        """The process's peak resident memory (VmHWM), in KB."""
        return self.status_kb("VmHWM")


def request(url: str, method: str = "GET", body: bytes = None, headers: dict = None, timeout: float = 10.0):
    """(status, headers as a lower-cased dict, body bytes); HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def basic(key: str) -> str:
    import base64
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def spool_lines(directory) -> list:
    """Every record in the spool's files (closed and open), parsed."""
    records = []
    for path in sorted(Path(directory).glob("*.jsonl*")):
        for line in path.read_bytes().split(b"\n"):
            if line.strip():
                records.append(json.loads(line))
    return records
