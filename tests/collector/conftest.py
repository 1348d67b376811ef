"""The collector's fixtures. The emulator fixtures (make_topic, gcs_bucket, ...) come from
tests/integration/fixtures.py, a plugin of tests/conftest.py, which also marks every test using
one `integration` and the emulator's marker."""
import pytest


# A real collector (`python -m pipeline serve`, a process of its own on 127.0.0.1 port 0):
# tests/collector/serving.py. `collector` is one with the spool sink in tmp_path/spool and the
# sources of serving.SOURCES, stopped with SIGTERM at the end (exit 0 is checked);
# `start_collector(args)` starts others (each stopped the same way unless the test did).
@pytest.fixture
def start_collector(tmp_path):
    from tests.collector.serving import Collector
    started = []

    def start(args, env=None, command=None, ready=True):
        collector = Collector(args, tmp_path, env, command)
        started.append(collector)
        return collector.wait_ready() if ready else collector

    yield start
    failures = []
    for collector in started:
        if collector.process.poll() is None:
            code = collector.stop()
            if code != 0:
                failures.append(f"exit {code}:\n{collector.log()}")
    assert not failures, "a collector did not exit 0 on SIGTERM: " + "\n".join(failures)


@pytest.fixture
def collector(start_collector, tmp_path):
    from tests.collector.serving import write_config
    config = write_config(tmp_path)
    running = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    running.spool = tmp_path / "spool"
    return running
