"""The replay lease on DuckDB: one replay at a time per warehouse. A replay finding the lease
held exits 2 with one line naming the holder and replays nothing; the lease is given up when a
replay ends (well or not), renewed while it runs, and lapses when its holder stopped renewing.

Across processes DuckDB lets only one process write the file; these tests are about the lease
row itself: held by a process that is gone, or raced for by threads of one process."""
import subprocess
import sys
import threading
import time

import pytest

from pipeline import main as main_module, replay
from pipeline.errors import UsageError
from pipeline.main import main, run_replay
from tests.conftest import ROOT
from tests.replay.test_replay import blocked, table  # noqa: F401 -- blocked is a fixture
from transforms.warehouse.replays import Selection
from transforms.warehouse.sink import WarehouseSettings, opened_backend

SELECTION = Selection("2026-12-01T00:00:00Z", ("contract_violation",))


def take_in_another_process(path: str, run: str, seconds: int) -> str:
    """Take the lease from a process that then exits without giving it up (a replay killed
    mid-run); its holder name (host/pid)."""
    code = ("import sys; from pipeline import replay; from transforms.warehouse.sink import WarehouseSettings, "
            "opened_backend\n"
            f"with opened_backend(WarehouseSettings('duckdb:///{path}')) as backend:\n"
            f"    assert backend.take_replay_lease({run!r}, replay.holder_name(), '{{}}', {seconds}) is None\n"
            "print(replay.holder_name())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def holder(warehouse: str):
    with opened_backend(WarehouseSettings(warehouse)) as backend:
        return backend.replay_lease_holder()


def test_a_replay_finding_the_lease_held_exits_2_naming_the_holder_and_replays_nothing(tmp_path, blocked, capsys):
    warehouse, config, _ = blocked
    who = take_in_another_process(f"{tmp_path}/w.duckdb", "firstrun0001", 600)
    assert main(["replay", "--warehouse", warehouse, "--config", config]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sluice: error: replay: another replay (run firstrun0001, started ")
    assert f" by {who})" in err[0] and "lapses at" in err[0]
    assert table(tmp_path, "SELECT count(*) AS n FROM _replays")[0]["n"] == 0  # nothing selected, nothing recorded
    assert table(tmp_path, "SELECT count(*) AS n FROM _dead_letters")[0]["n"] == 3  # nothing failed again
    assert holder(warehouse).run == "firstrun0001"  # the refused replay left the holder's lease alone


def test_a_lapsed_lease_is_taken_over_and_its_old_holder_cannot_release_the_new_one(tmp_path, blocked):
    warehouse, config, _ = blocked
    take_in_another_process(f"{tmp_path}/w.duckdb", "crashed00001", -1)  # lapsed a second ago
    with replay.leased(WarehouseSettings(warehouse), SELECTION, "newholder001"):
        with opened_backend(WarehouseSettings(warehouse)) as backend:
            backend.release_replay_lease("crashed00001")  # the old holder, back late
        assert holder(warehouse).run == "newholder001"
    assert holder(warehouse) is None  # released at the end of the block
    assert run_replay(["--warehouse", warehouse, "--config", config])["replayed"] == 3


def test_threads_racing_for_the_lease_let_exactly_one_in(tmp_path, blocked):
    warehouse, _, _ = blocked
    start, inside, outcomes = threading.Barrier(8), threading.Event(), []

    def contend(i):
        start.wait()
        try:
            with replay.leased(WarehouseSettings(warehouse), SELECTION, f"thread{i:05d}"):
                outcomes.append("held")
                inside.wait(5)  # hold it until the others have tried
        except UsageError as exc:
            outcomes.append(str(exc))
            if sum(o != "held" for o in outcomes) == 7:
                inside.set()
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 8 and outcomes.count("held") == 1
    assert all(o.startswith("replay: another replay (run thread") for o in outcomes if o != "held")
    assert holder(warehouse) is None


def test_a_running_replay_renews_its_lease(tmp_path, blocked):
    warehouse, _, _ = blocked
    with replay.leased(WarehouseSettings(warehouse), SELECTION, "longrun00001", seconds=2):
        time.sleep(3)  # past the first expiry: held still only because it was renewed
        with pytest.raises(UsageError, match="run longrun00001"):
            with replay.leased(WarehouseSettings(warehouse), SELECTION, "second000001"):
                pass
    assert holder(warehouse) is None


def test_a_failed_replay_gives_its_lease_up(tmp_path, blocked, monkeypatch):
    warehouse, config, _ = blocked

    def fail(*_args):
        raise RuntimeError("the job failed")  # stands in for a failed Beam job, which is hard to cause for real
    monkeypatch.setattr(main_module, "execute", fail)
    with pytest.raises(RuntimeError, match="the job failed"):
        run_replay(["--warehouse", warehouse, "--config", config])
    assert holder(warehouse) is None
    monkeypatch.undo()
    assert run_replay(["--warehouse", warehouse, "--config", config])["replayed"] == 3  # run again at once


def test_a_dry_run_takes_no_lease(tmp_path, blocked):
    warehouse, config, _ = blocked
    take_in_another_process(f"{tmp_path}/w.duckdb", "firstrun0002", 600)
    assert run_replay(["--warehouse", warehouse, "--config", config, "--dry_run"])["dry_run"].startswith(
        "would replay 3 dead letters")
