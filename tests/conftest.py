"""Shared fixtures. Nothing here reaches beyond 127.0.0.1."""
import ipaddress
import json
import os
import socket
from pathlib import Path

import pytest

# google-auth and gcloud must not probe the metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")

ROOT = Path(__file__).resolve().parents[1]
# The Segment documentation's examples, copied unchanged (see tests/golden/README.md): the
# golden output depends on them, so the suite reads its own copy.
FIXTURES = ROOT / "tests" / "golden" / "segment-spec-examples.jsonl"
SAMPLE = ROOT / "samples" / "events.jsonl"


# The emulator fixtures (pubsub_emulator, make_topic, gcs_emulator, gcs_bucket, bigquery_emulator,
# bigquery_client, ...) for every directory, defined once: one emulator of each kind per session.
pytest_plugins = ("tests.integration.fixtures",)


# What a test needs beyond .venv, by the fixture it uses (directly or through other fixtures):
# the fixture's emulator marker, and `integration`. `make test-fast` deselects `integration` and
# `node` (tests that need the pinned TypeScript compiler from node_modules: marked where they are).
EMULATOR_FIXTURES = ("pubsub_emulator", "gcs_emulator", "bigquery_emulator")


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [name for name in EMULATOR_FIXTURES if name in getattr(item, "fixturenames", ())]
        for name in used:
            item.add_marker(name)
        if used:
            item.add_marker("integration")


# The names and addresses a test may resolve or dial in this process (its subprocesses, the
# emulators and pipelines it starts, are given only 127.0.0.1 URLs).
LOOPBACK_NAMES = (None, "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1", b"::1")


def _loopback(address) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Every test in this process resolves only loopback names and dials only loopback
    addresses: anything else is refused before it leaves (ConnectionRefusedError, as a closed
    port would answer) and fails the test at its end, even where the code under test took the
    refusal as an ordinary network failure. Tests of the webhook guard may so use public
    addresses as data: a bug that dials one fails here instead of reaching it."""
    attempts = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK_NAMES and not (isinstance(host, str) and _loopback(host)):
            attempts.append(f"resolve {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"tests resolve only loopback names, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def refused(sock, address) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or _loopback(str(address[0])):
            return False
        attempts.append(f"connect to {address!r}")
        return True

    def connect(sock, address):
        if refused(sock, address):
            raise ConnectionRefusedError(f"tests dial only loopback addresses, not {address!r}")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        return 111 if refused(sock, address) else real_connect_ex(sock, address)  # ECONNREFUSED
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert not attempts, f"this test reached beyond loopback: {attempts}"


@pytest.fixture
def segment_examples():
    """The Segment documentation's example payloads (CC BY 4.0), one dict per line."""
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def warehouse_url(tmp_path):
    return f"duckdb:///{tmp_path}/warehouse.duckdb"


def run_file_job(tmp_path, lines, config_text: str, *extra_args):
    """The real job over `lines` (dicts, one per input line) with `config_text` as its config;
    checks conservation; returns (summary, a read-only connection to the warehouse)."""
    import duckdb

    from pipeline.main import run
    (tmp_path / "sluice.yaml").write_text(config_text)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb", *extra_args])
    assert summary["conservation"]["holds"], summary
    return summary, duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)


def rows(conn, sql) -> list:
    """A query's rows as dicts."""
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]
