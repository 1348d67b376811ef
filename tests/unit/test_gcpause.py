import gc
import threading

from transforms import gcpause


def test_pause_disables_and_restores_the_collector():
    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_and_concurrent_pauses_end_with_the_last_one():
    entered, release = threading.Event(), threading.Event()

    def hold():
        with gcpause.paused():
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    entered.wait(5)
    with gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    worker.join(5)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_comes_back_when_the_body_raises():
    try:
        with gcpause.paused():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_relaxed_collects_less_often_and_restores_everything():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with gcpause.relaxed():
        assert gc.get_threshold()[0] == gcpause.RELAXED_THRESHOLD > before[0]
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > frozen  # what was alive at the start is never walked again
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_relaxed_restores_when_the_run_raises():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        with gcpause.relaxed():
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_cycles_made_while_relaxed_are_still_collected():
    import weakref

    class Node:
        pass

    with gcpause.relaxed():
        node = Node()
        node.self = node  # a cycle: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        alive = [[] for _ in range(3 * gcpause.RELAXED_THRESHOLD)]  # allocations past the raised threshold
        assert gone() is None and alive


def test_a_local_batch_run_is_relaxed_for_its_whole_length(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from pipeline.main import run
    seen = []
    real = gcpause.relaxed

    @contextmanager
    def watched():
        with real():
            seen.append(gc.get_threshold()[0])
            yield
        seen.append(gc.get_threshold()[0])
    monkeypatch.setattr(gcpause, "relaxed", watched)
    (tmp_path / "in.jsonl").write_text('{"type": "track", "event": "E", "userId": "u", "messageId": "m"}\n')
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["stored"] == 1
    assert seen == [gcpause.RELAXED_THRESHOLD, gc.get_threshold()[0]]


def test_relaxed_leaves_a_heap_frozen_by_someone_else_frozen():
    """The embedded collector freezes its settled heap at start and loads with run_built again and
    again: each load's relaxed() must not unfreeze it."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gcpause.relaxed():
            with gcpause.relaxed():  # nested: thresholds come back in order
                assert gc.get_threshold()[0] == gcpause.RELAXED_THRESHOLD
            assert gc.get_threshold()[0] == gcpause.RELAXED_THRESHOLD
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
