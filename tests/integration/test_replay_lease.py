"""Replays cannot run twice (issue 15), on the BigQuery emulator.

The reproduction: two `python -m pipeline replay` processes started together over the same
dead letters, the cause not fixed, so every record replayed fails again into a new dead letter
naming its original (`sluice_replay_of`). Before the lease, both selected every dead letter and
each original failed again twice. Now each is replayed once: the second replay exits 2 with one
line naming the first (or, had it started after the first ended, finds nothing left)."""
import json
import subprocess
import sys
import threading
from collections import Counter

import pytest

from pipeline import replay
from pipeline.main import main, run
from tests.conftest import ROOT
from tests.integration.test_bigquery_warehouse import query
from tests.replay.test_replay import CONTRACT
from transforms.warehouse.sink import WarehouseSettings, opened_backend

pytestmark = pytest.mark.integration
BLOCKED = 40  # events the contract blocks: the dead letters both replays want


@pytest.fixture
def blocked_on_bigquery(tmp_path, bigquery_emulator, dataset_name):
    """A BigQuery warehouse holding BLOCKED contract_violation dead letters; the common args."""
    (tmp_path / "contracts" / "track").mkdir(parents=True)
    (tmp_path / "contracts" / "track" / "order_completed.json").write_text(json.dumps(CONTRACT))
    (tmp_path / "sluice.yaml").write_text("contracts:\n  directory: contracts\n  violations: block\n")
    events = [{"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"m{i}",
               "properties": {"total": str(i)}} for i in range(BLOCKED)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    common = ["--config", str(tmp_path / "sluice.yaml"), "--bigquery_endpoint", bigquery_emulator.endpoint,
              "--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}"]
    assert run(["--input_files", str(tmp_path / "events.jsonl"), *common])["dead_lettered"] == \
        {"contract_violation": BLOCKED}
    return common


def settings(bigquery_emulator, dataset_name) -> WarehouseSettings:
    return WarehouseSettings(f"bigquery://{bigquery_emulator.project}/{dataset_name}",
                             bigquery_endpoint=bigquery_emulator.endpoint)


def replays_of_each(bigquery_client, dataset_name) -> tuple:
    """(the original dead letters' ids, {original id: how many times a replay of it failed again})."""
    letters = query(bigquery_client, f"SELECT dead_letter_id, attributes FROM `{dataset_name}._dead_letters`")
    attributes = [(r["dead_letter_id"], r["attributes"] if isinstance(r["attributes"], dict)
                   else json.loads(r["attributes"] or "{}")) for r in letters]
    originals = {i for i, a in attributes if replay.REPLAY_ATTRIBUTE not in a}
    return originals, Counter(a[replay.REPLAY_ATTRIBUTE] for _, a in attributes if replay.REPLAY_ATTRIBUTE in a)


def test_two_replays_started_together_replay_each_dead_letter_once(tmp_path, blocked_on_bigquery, bigquery_client,
                                                                   dataset_name):
    both = [subprocess.Popen([sys.executable, "-m", "pipeline", "replay", *blocked_on_bigquery], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in both]
    originals, failed_again = replays_of_each(bigquery_client, dataset_name)
    assert len(originals) == BLOCKED
    assert set(failed_again) == originals and set(failed_again.values()) == {1}  # each replayed, once
    recorded = query(bigquery_client, f"SELECT dead_letter_id, replay_run FROM `{dataset_name}._replays`")
    assert sorted(r["dead_letter_id"] for r in recorded) == sorted(originals)
    (winner,) = {r["replay_run"] for r in recorded}
    codes = sorted(code for code, _, _ in outcomes)
    if codes == [0, 2]:  # the usual race: the second found the first holding the lease
        _, _, err = next(o for o in outcomes if o[0] == 2)
        errors = [line for line in err.splitlines() if line.startswith("sluice: error:")]
        assert errors == [line for line in err.splitlines() if line.strip()] and len(errors) == 1, err
        assert errors[0].startswith(f"sluice: error: replay: another replay (run {winner}, started ")
    else:  # the second started after the first had ended: nothing of the originals was left to it
        assert codes == [0, 0], outcomes
        assert sorted(f"replayed {BLOCKED} dead letters" in out for _, out, _ in outcomes) == [False, True], outcomes


def test_a_held_lease_refuses_a_replay_and_a_lapsed_one_does_not(blocked_on_bigquery, bigquery_emulator,
                                                                 bigquery_client, dataset_name, capsys):
    warehouse = settings(bigquery_emulator, dataset_name)
    with opened_backend(warehouse) as backend:  # another replay, on another machine, mid-run
        assert backend.take_replay_lease("elsewhere001", "other-host/4242", "{}", 600) is None
    assert main(["replay", *blocked_on_bigquery]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sluice: error: replay: another replay (run elsewhere001, started ")
    assert "by other-host/4242)" in err[0]
    assert replays_of_each(bigquery_client, dataset_name)[1] == Counter()  # nothing replayed
    with opened_backend(warehouse) as backend:
        assert backend.replay_lease_holder().run == "elsewhere001"  # still its holder's
        backend.release_replay_lease("elsewhere001")
        assert backend.take_replay_lease("crashed0001", "gone/1", "{}", -1) is None  # then killed: lapsed
    assert main(["replay", *blocked_on_bigquery]) == 0
    originals, failed_again = replays_of_each(bigquery_client, dataset_name)
    assert set(failed_again) == originals and set(failed_again.values()) == {1}
    with opened_backend(warehouse) as backend:
        assert backend.replay_lease_holder() is None  # given up at the end


def test_threads_racing_for_the_lease_on_bigquery_let_exactly_one_in(bigquery_emulator, dataset_name):
    warehouse, results, failures = settings(bigquery_emulator, dataset_name), [], []
    start = threading.Barrier(6, timeout=60)
    with opened_backend(warehouse) as backend:  # the dataset first: the race is for the lease, and the
        backend.replay_lease_holder()           # emulator answers datasets created together with a 400

    def take(i):
        try:
            with opened_backend(warehouse) as backend:
                start.wait()
                results.append(backend.take_replay_lease(f"race{i:08d}", f"h/{i}", "{}", 600))
        except Exception as exc:  # noqa: BLE001 - reported below, with the others' results
            failures.append(exc)
            start.abort()  # the others stop waiting for this one
    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not failures, failures
    assert len(results) == 6 and results.count(None) == 1
    (winner,) = {lease.run for lease in results if lease is not None}  # every loser names the same winner
    with opened_backend(warehouse) as backend:
        assert backend.replay_lease_holder().run == winner
