"""The emulator itself: started by the suite, answering the real client on 127.0.0.1."""
import os
import signal
import socket
import subprocess
import sys

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.conftest import ROOT
from tests.integration.emulators import _stop_session, free_port

pytestmark = pytest.mark.integration


def test_the_emulator_answers_the_real_client(bigquery_client, dataset_name):
    bigquery_client.create_dataset(bigquery.Dataset(f"{bigquery_client.project}.{dataset_name}"))
    table = bigquery_client.create_table(bigquery.Table(f"{bigquery_client.project}.{dataset_name}.t",
                                                        schema=[bigquery.SchemaField("x", "INT64")]))
    assert bigquery_client.insert_rows_json(table, [{"x": 1}, {"x": 2}]) == []
    rows = bigquery_client.query(f"SELECT sum(x) AS s FROM `{bigquery_client.project}.{dataset_name}.t`").result()
    assert [r.s for r in rows] == [3]


def test_make_bigquery_emulator_starts_one_for_manual_runs_and_stops_it_with_itself(tmp_path):
    """The documented one-line start (docs/bigquery.md): `make bigquery-emulator` runs the
    module below; started here on a free port, it answers the real client, and a stop signal
    ends it and its emulator."""
    dry = subprocess.run(["make", "-n", "bigquery-emulator"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ".venv/bin/python -m tests.integration.emulators --port ${BQ_PORT:-9050}" in dry.stdout, dry.stdout
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.emulators", "--port", str(port),
                                "--project", "manual-project", "--data", str(tmp_path)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)  # a failed test still ends both, as a group
    try:
        first = process.stdout.readline()  # printed once it answers (a 60 s start-up limit is its own)
        assert first.startswith(f"BigQuery emulator on http://127.0.0.1:{port} (project manual-project"), first
        client = bigquery.Client(project="manual-project", credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{port}"))
        client.create_dataset("manual")
        assert "manual" in [d.dataset_id for d in client.list_datasets()]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        _stop_session(process)
    with socket.socket() as probe:  # the emulator went with it
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_make_bigquery_emulator_on_a_port_in_use_says_so(tmp_path):
    """Something else answered on the port: the readiness check passed against it, the start line
    was printed, and the emulator, unable to bind, exited 3 without a word of why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "tests.integration.emulators", "--port", str(port),
                               "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (f"bigquery-emulator: 127.0.0.1:{port} is in use by another process (Address already in "
                           "use), an emulator still running, say: stop it, or choose another port "
                           "(BQ_PORT=9060 make bigquery-emulator)\n")
    assert not (tmp_path / "bigquery-emulator.log").exists()  # none was started


def test_an_emulator_that_exits_is_reported_with_the_last_line_of_its_log(tmp_path):
    """`make bigquery-emulator` prints the error's first line: it said only `emulator exited with 3:`."""
    from tests.integration.emulators import _wait_for
    log = tmp_path / "emulator.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", "print('starting'); print('ERROR: cannot bind'); "
                                    "print(); raise SystemExit(3)"], stdout=out)
    with pytest.raises(RuntimeError) as failed:
        _wait_for(f"http://127.0.0.1:{free_port()}/", process, log)
    assert str(failed.value).splitlines()[0] == f"emulator exited with 3: ERROR: cannot bind (log {log})"
