"""Code the concurrency test runs in separate processes (each a worker with its own client)."""
from transforms.messages import Event
from transforms.warehouse.bigquery_backend import BigQueryWarehouse


def write_with_new_columns(endpoint: str, project: str, dataset: str, worker: str, batches: int) -> tuple:
    """Write `batches` batches, each adding a column of this worker's own; (stored, failed)."""
    backend = BigQueryWarehouse(project, dataset, endpoint).open()
    stored = failed = 0
    try:
        for batch in range(batches):
            body = {"type": "track", "event": "Shared", "userId": "u", "messageId": f"{worker}-{batch}",
                    "timestamp": "2026-11-02T09:00:00.000Z", "receivedAt": "2026-11-02T09:00:00.000Z",
                    "properties": {f"{worker}_{batch}": batch, "common": batch}}
            result = backend.write_events([Event(body, body, None, {}, "test", body["receivedAt"])])
            stored += len(result.stored)
            failed += len(result.failed)
    finally:
        backend.close()
    return stored, failed
