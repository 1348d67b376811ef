"""rudder-sdk-python's large batches (docs/collector.md, "What the SDKs send"): it cuts a batch
only once its JSON reaches 4 MiB, so with Segment's 512,000-byte request limit a batch of large
events is refused 413 and dropped by the SDK; collector.max_request_bytes 4,300,000 takes its
largest batch of events the collector allows. The real SDK against a real collector."""
import json

import pytest

from pipeline import config as config_module
from pipeline.errors import UsageError
from tests.collector import sdks
from tests.collector.serving import spool_lines, write_config

SOURCES = [{"name": "server", "write_key": "key-server"}]


def big_events(count: int) -> list:
    """Events near the 32 KB limit as stored (UTF-8), about three times larger as rudder writes
    them (json.dumps escapes each "é" as \\u00e9): 47 of them make a batch past 4 MiB."""
    return [{"type": "track", "event": "Big", "userId": "u-1", "properties": {"text": "é" * 15_000}}
            for _ in range(count)]


def test_a_rudder_batch_past_the_default_limit_is_refused_and_dropped_by_the_sdk(start_collector, tmp_path):
    collector = start_collector(["--config", str(write_config(tmp_path, SOURCES)), "--sink", str(tmp_path / "s")])
    with pytest.raises(sdks.SdkDeliveryError):
        sdks.send_rudder_python(collector.url, "key-server", big_events(20), timeout=60, max_retries=1)
    assert spool_lines(tmp_path / "s") == []


def test_max_request_bytes_4300000_takes_rudders_largest_batches(start_collector, tmp_path):
    config = write_config(tmp_path, SOURCES, collector={"max_request_bytes": 4_300_000})
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "s")])
    sent = sdks.send_rudder_python(collector.url, "key-server", big_events(100), timeout=120, max_retries=1)
    records = spool_lines(tmp_path / "s")
    assert sorted(e["messageId"] for r in records for e in r["batch"]) == sorted(sent)
    # its largest request, as the SDK wrote it (json.dumps' escapes and spaces), was past 4 MiB
    assert max(sum(len(json.dumps(e)) for e in r["batch"]) for r in records) > 4 * 1024 * 1024
    # and the job decoding those records must take them: the figure the docs give, checked at start
    with pytest.raises(UsageError, match=f"at least {4_700_200 + 6 * len('server')}"):
        config_module.load(str(config))
    document = json.loads(config.read_text())
    config.write_text(json.dumps({**document, "decode": {"max_record_bytes": 4_700_200 + 6 * len("server")}}))
    assert config_module.load(str(config)).decode.max_record_bytes == 4_700_236
