"""Emulators the integration tests start and stop themselves, on 127.0.0.1 only.

The BigQuery emulator (PyPI local-bigquery, on DuckDB 1.5.5) lives in its own Python 3.13
environment, installed by `make emulators` from emulators/bigquery-requirements.txt. DuckDB
looks for its extensions under $HOME/.duckdb and would try to download missing ones, so
each emulator gets a HOME of its own with the extensions copied in from that environment.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIGQUERY_VENV = Path(os.environ.get("SLUICE_BIGQUERY_EMULATOR", ROOT / ".emulators" / "bigquery"))
PROJECT = "test-project"


class EmulatorMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortInUse(RuntimeError):
    pass


def check_port_free(port: int) -> None:
    """PortInUse when something listens on 127.0.0.1:port: the readiness check would pass against
    that server while the emulator, unable to bind, exits."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed port's TIME_WAIT is free
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUse(f"127.0.0.1:{port} is in use by another process ({exc.strerror}), an emulator "
                            "still running, say") from None


def _failure(what: str, log: Path) -> str:
    """`what: the log's last line`, then the log's tail: the first line alone says why."""
    tail = log.read_text(errors="replace")[-3000:]
    reason = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "its log is empty")
    return f"{what}: {reason} (log {log})\n{tail}"


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(_failure(f"emulator exited with {process.returncode}", log))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: ready
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(_failure(f"emulator not ready after {timeout:.0f} s", log))


def _stop_session(process) -> None:
    """End an emulator started in a session of its own, and everything it started (a JVM)."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class _SessionEmulator:
    """An emulator process in a session of its own: `with X(workdir) as emulator:` starts it
    (subclasses define start()) and stops it with everything it started."""
    _process = None

    def stop(self) -> None:
        _stop_session(self._process)
        self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _sdk_root() -> Path:
    """The Google Cloud SDK's folder (its Pub/Sub emulator ships inside it)."""
    if os.environ.get("CLOUDSDK_ROOT"):
        return Path(os.environ["CLOUDSDK_ROOT"])
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorMissing("gcloud is not on PATH: the Pub/Sub emulator ships with the Google Cloud SDK")
    return Path(gcloud).resolve().parent.parent


class PubSubEmulator(_SessionEmulator):
    """`with PubSubEmulator(workdir) as ps:` -> ps.host ("127.0.0.1:PORT") for PUBSUB_EMULATOR_HOST."""

    def __init__(self, workdir: Path, project: str = PROJECT):
        self.workdir, self.project = Path(workdir), project
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._process = None

    def start(self) -> "PubSubEmulator":
        command = _sdk_root() / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
        if not command.exists():
            raise EmulatorMissing(f"{command} is missing: install the SDK's pubsub-emulator component")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "pubsub-emulator.log"
        # Its own session: the script starts a JVM, and stop() must end both.
        self._process = subprocess.Popen([str(command), "--host=127.0.0.1", f"--port={self.port}"],
                                         stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(f"http://{self.host}/", self._process, log)
        return self



class BigQueryEmulator:
    """`with BigQueryEmulator(workdir) as bq:` -> bq.endpoint, bq.project, bq.grpc_port."""

    def __init__(self, workdir: Path, project: str = PROJECT, port: int = None):
        self.workdir, self.project = Path(workdir), project
        self.port, self.grpc_port = port or free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process = None

    def _home(self) -> Path:
        home = self.workdir / "home"
        extensions = home / ".duckdb" / "extensions" / "v1.5.5" / "linux_amd64"
        extensions.mkdir(parents=True, exist_ok=True)
        for found in BIGQUERY_VENV.glob("lib/python3*/site-packages/duckdb_extension_*/**/*.duckdb_extension"):
            shutil.copy(found, extensions / found.name)
        return home

    def start(self) -> "BigQueryEmulator":
        check_port_free(self.port)
        command = BIGQUERY_VENV / "bin" / "local-bigquery"
        if not command.exists():
            raise EmulatorMissing(f"{command} is missing: run `make emulators` (make test does)")
        log = self.workdir / "bigquery-emulator.log"
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(self._home())}
        self._process = subprocess.Popen(
            [str(command), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--grpc-port",
             str(self.grpc_port), "--project", self.project, "--data-dir", str(data)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        _wait_for(f"{self.endpoint}/bigquery/v2/projects/{self.project}/datasets", self._process, log)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class GcsEmulator(_SessionEmulator):
    """`with GcsEmulator(workdir) as gcs:` -> gcs.endpoint for STORAGE_EMULATOR_HOST.

    PyPI's gcp-storage-emulator (a test dependency in setup.py), in memory, in its own process;
    google-cloud-storage (and so Beam's gs:// filesystem) talks to it when STORAGE_EMULATOR_HOST
    is set, with anonymous credentials."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process = None

    def start(self) -> "GcsEmulator":
        command = Path(sys.executable).parent / "gcp-storage-emulator"
        if not command.exists():
            raise EmulatorMissing(f"{command} is missing: `make test` installs it (setup.py's test extra)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "gcs-emulator.log"
        self._process = subprocess.Popen([str(command), "start", "--host", "127.0.0.1", "--port", str(self.port),
                                          "--in-memory"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait_for(f"{self.endpoint}/storage/v1/b", self._process, log)
        return self

    def client(self):
        """A storage client on the emulator (the caller sets STORAGE_EMULATOR_HOST)."""
        from google.cloud import storage
        client = storage.Client.create_anonymous_client()
        client.project = PROJECT
        return client



def serve_bigquery(argv=None) -> int:
    """`make bigquery-emulator`: the emulator the tests use, started the same way, for manual
    runs (`--bigquery_endpoint`); in the foreground until Ctrl-C, its tables kept in --data."""
    parser = argparse.ArgumentParser(prog="make bigquery-emulator",
                                     description="The BigQuery emulator on 127.0.0.1, until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9050)
    parser.add_argument("--project", default="demo-project")
    parser.add_argument("--data", default=str(ROOT / "demo-output" / "bigquery-emulator"),
                        help="where its tables and log are kept between starts (default %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: a port number, 1 to 65535")
    emulator = BigQueryEmulator(Path(args.data), args.project, args.port)

    def stop(signum, frame):  # SIGTERM too (and SIGINT where a shell left it ignored): the emulator goes with us
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        emulator.start()
        print(f"BigQuery emulator on {emulator.endpoint} (project {args.project}, log {args.data}/"
              f"bigquery-emulator.log); Ctrl-C stops it. Runs take: --warehouse bigquery://{args.project}/DATASET "
              f"--bigquery_endpoint {emulator.endpoint}", flush=True)
        return emulator._process.wait()
    except PortInUse as exc:
        print(f"bigquery-emulator: {exc}: stop it, or choose another port (BQ_PORT=9060 make bigquery-emulator)",
              file=sys.stderr)
        return 1
    except (EmulatorMissing, RuntimeError) as exc:  # the first line says why (the log's last line)
        print(f"bigquery-emulator: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        emulator.stop()


if __name__ == "__main__":
    sys.exit(serve_bigquery())
