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
