"""What the real emulator cannot do on its own: BigQuery's mutation lag, injected by wrapping
the real client; transient HTTP failures, injected by a proxy in front of the real emulator."""
import pytest

from tests.integration.test_bigquery_warehouse import query
from transforms.messages import Event
from transforms.warehouse.bigquery_backend import BigQueryWarehouse

pytestmark = pytest.mark.integration


def event(message_id, **properties):
    body = {"type": "page", "name": "Home", "userId": "u", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00.000Z", "receivedAt": "2026-11-02T09:00:00.000Z",
            "properties": properties}
    return Event(body, body, None, {}, "test", body["receivedAt"])


class LaggingInserts:
    """Wraps the real insert_rows_json: for its first `times` calls, rows carrying `field` are
    refused the way BigQuery refuses them while a new column is not yet visible to inserts."""

    def __init__(self, real, field: str, times: int):
        self.real, self.field, self.times, self.calls = real, field, times, 0

    def __call__(self, table, rows, **kwargs):
        self.calls += 1
        if self.calls > self.times or not any(self.field in row for row in rows):
            return self.real(table, rows, **kwargs)
        lag = {"reason": "invalid", "location": self.field, "message": f"no such field: {self.field}."}
        stopped = {"reason": "stopped", "location": "", "message": ""}
        return [{"index": i, "errors": [lag if self.field in row else stopped]} for i, row in enumerate(rows)]


def backend(emulator, dataset, **settings):
    return BigQueryWarehouse(emulator.project, dataset, emulator.endpoint, **settings).open()


def test_rows_refused_for_a_new_field_are_retried_until_it_is_visible(bigquery_emulator, bigquery_client,
                                                                      dataset_name):
    warehouse = backend(bigquery_emulator, dataset_name)
    warehouse.write_events([event("p0", title="first")])
    warehouse._client.insert_rows_json = LaggingInserts(warehouse._client.insert_rows_json, "coupon", 2)
    result = warehouse.write_events([event("p1", coupon="AUTUMN"), event("p2", title="plain")])
    assert (len(result.stored), result.failed) == (2, [])
    assert warehouse.take_calls()["mutation_lag.waits"] == 2
    rows = query(bigquery_client, f"SELECT message_id, coupon FROM `{dataset_name}.pages` ORDER BY 1")
    assert rows == [{"message_id": "p0", "coupon": None}, {"message_id": "p1", "coupon": "AUTUMN"},
                    {"message_id": "p2", "coupon": None}]


def test_a_field_that_never_becomes_visible_is_a_dead_letter_after_the_bound(bigquery_emulator, dataset_name):
    warehouse = backend(bigquery_emulator, dataset_name, lag_deadline=0.3)
    warehouse.write_events([event("p0", title="first")])
    warehouse._client.insert_rows_json = LaggingInserts(warehouse._client.insert_rows_json, "coupon", 1000)
    result = warehouse.write_events([event("p1", coupon="AUTUMN"), event("p2", title="plain")])
    assert [e.body["messageId"] for e in result.stored] == ["p2"]
    [(failed, message)] = result.failed
    assert failed.body["messageId"] == "p1" and "no such field: coupon" in message


INSERTS = lambda method, path: "insertAll" in path  # noqa: E731 - a match predicate for the proxy


def test_transient_failures_lose_nothing_and_duplicate_nothing(bigquery_emulator, bigquery_client, dataset_name):
    """503s, 429s and resets for a while, on every kind of call; then an insert that lands but
    whose answer is lost (the retry carries the same insertIds, so it is not stored twice)."""
    from tests.integration.faultproxy import Fault, FaultProxy
    with FaultProxy(bigquery_emulator.endpoint) as proxy:
        warehouse = BigQueryWarehouse(bigquery_emulator.project, dataset_name, proxy.url, retry_deadline=60).open()
        # Each fault once for certain (a window alone may see only 3 retries on a loaded machine),
        # then a stretch of failures on whatever calls come.
        proxy.inject(503, 429, Fault.reset(), 500)
        proxy.fail_for(1.5, 503, 429)
        first = warehouse.write_events([event(f"a{i}", n=i) for i in range(20)])
        proxy.inject(Fault.after_forward_reset(), 503, match=INSERTS)
        second = warehouse.write_events([event(f"b{i}", n=i, extra="x") for i in range(20)])
        outcomes = {outcome for _, _, outcome in proxy.requests}
    assert {"503", "429", "reset", "500", "after_forward_reset", "forwarded"} <= outcomes
    assert (len(first.stored), first.failed, len(second.stored), second.failed) == (20, [], 20, [])
    rows = query(bigquery_client, f"SELECT message_id, count(*) AS n FROM `{dataset_name}.pages` GROUP BY 1")
    assert len(rows) == 40 and {r["n"] for r in rows} == {1}


def test_a_batch_that_keeps_failing_becomes_dead_letters_not_losses(bigquery_emulator, dataset_name):
    from tests.integration.faultproxy import FaultProxy
    with FaultProxy(bigquery_emulator.endpoint) as proxy:
        warehouse = BigQueryWarehouse(bigquery_emulator.project, dataset_name, proxy.url, retry_deadline=1.0).open()
        warehouse.write_events([event("p0")])
        proxy.fail_for(30, 503, match=INSERTS)
        result = warehouse.write_events([event(f"p{i}") for i in range(1, 6)])
    assert result.stored == [] and len(result.failed) == 5
    assert all("503" in message or "gave up" in message for _, message in result.failed)


def test_permanent_errors_are_not_retried(bigquery_emulator, dataset_name):
    from tests.integration.faultproxy import Fault, FaultProxy
    with FaultProxy(bigquery_emulator.endpoint) as proxy:
        warehouse = BigQueryWarehouse(bigquery_emulator.project, dataset_name, proxy.url, retry_deadline=60).open()
        warehouse.write_events([event("p0")])
        proxy.inject(Fault.status(403, body={"error": {"code": 403, "message": "Access Denied",
                                                        "errors": [{"reason": "accessDenied"}]}}), match=INSERTS)
        result = warehouse.write_events([event("p1")])
        inserts = [r for r in proxy.requests if "insertAll" in r[1]]
    assert result.stored == [] and "Access Denied" in result.failed[0][1]
    assert len(inserts) == 2  # p0's, and p1's single attempt


UPLOADS = lambda method, path: "/upload/" in path  # noqa: E731 - load jobs' data goes up here


def test_load_jobs_survive_faults_and_a_lost_answer_without_duplicates(bigquery_emulator, bigquery_client,
                                                                       dataset_name):
    from tests.integration.faultproxy import Fault, FaultProxy
    with FaultProxy(bigquery_emulator.endpoint) as proxy:
        warehouse = BigQueryWarehouse(bigquery_emulator.project, dataset_name, proxy.url, write_method="load",
                                      retry_deadline=60).open()
        warehouse.write_events([event("p0")])
        proxy.inject(503, Fault.reset(), match=UPLOADS)
        first = warehouse.write_events([event(f"a{i}", n=i) for i in range(10)])
        proxy.inject(Fault.after_forward_reset(), match=UPLOADS)  # the job is created; its answer is lost
        second = warehouse.write_events([event(f"b{i}", n=i) for i in range(10)])
        calls = warehouse.take_calls()
    assert (len(first.stored), first.failed, len(second.stored), second.failed) == (10, [], 10, [])
    assert "tabledata.insertAll" not in calls and calls["jobs.get"] >= 1
    rows = query(bigquery_client, f"SELECT message_id, count(*) AS n FROM `{dataset_name}.pages` GROUP BY 1")
    assert len(rows) == 21 and {r["n"] for r in rows} == {1}
