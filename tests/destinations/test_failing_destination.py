"""A destination that is down cannot hold up another: one webhook answers 503 for 8 s while
another is healthy, in one whole job. The healthy one's batches all go out at once, and the
failing one's events end delivered exactly once, after its outage."""
import json
from collections import Counter

import pytest
import yaml

from pipeline.main import run
from tests.destinations.receiver import Receiver

# The outage and the backoff are scaled down together (30 s with 1-4 s backoff took 32 s of the
# suite): the down destination is still retried many times over the outage, and the healthy one
# must be done (under 5 s) well before the outage ends.
OUTAGE_SECONDS = 8
EVENTS = 200


def destination(name: str, url: str) -> dict:
    return {"name": name, "type": "webhook", "url": url, "allow_private_network": True,
            "batch": {"max_events": 10, "shards": 4},
            "retry": {"max_attempts": 40, "initial_backoff_seconds": 0.25, "max_backoff_seconds": 1,
                      "max_age_seconds": 60}}


@pytest.mark.slow
def test_a_destination_down_for_8_s_costs_a_healthy_one_nothing_and_loses_nothing(tmp_path):
    events = [{"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"m{i}",
               "properties": {"total": i}} for i in range(EVENTS)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with Receiver(unavailable_seconds=OUTAGE_SECONDS) as down, Receiver() as up:
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(
            {"destinations": [destination("down", down.url), destination("up", up.url)]}))
        summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                       "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"] and summary["dead_lettered"] == {}, summary
    assert summary["forwarded"] == {"down": EVENTS, "up": EVENTS}
    started = min(r.at for r in down.requests + up.requests)
    # The healthy destination: every batch answered within seconds of the job's first request,
    # while the other was still refusing everything.
    assert all(r.status == 200 for r in up.requests)
    assert Counter(p["messageId"] for p in up.delivered_payloads()) == Counter(e["messageId"] for e in events)
    assert max(r.at for r in up.requests) - started < 5
    # The failing one: refused for the whole outage, retried, then each event delivered once.
    assert max(r.at for r in down.requests) - started >= OUTAGE_SECONDS
    assert summary["destinations"]["down"]["retried"] > 0
    delivered = Counter(p["messageId"] for p in down.delivered_payloads())
    assert delivered == Counter(e["messageId"] for e in events)
