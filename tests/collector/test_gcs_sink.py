"""GcsSink on the GCS emulator: each group commit one object, a put released once its object
exists, GCS failing -> SinkUnavailable, and the objects read back by a gs:// backfill."""
import asyncio
import json
import re

import pytest

from collector.sinks import SinkUnavailable
from collector.sinks.spool import GcsSink
from tests.integration.faultproxy import Fault, FaultProxy

OBJECT = re.compile(r"^spool/web/\d{8}T\d{6}-\d+-[0-9a-f]{8}-\d{6}\.jsonl$")


def record(task: int, seq: int, **event) -> bytes:
    event = event or {"type": "track", "event": "E", "userId": f"u{task}"}
    return json.dumps({"batch": [{**event, "messageId": f"{task}-{seq}", "source": "web"}], "source": "web",
                       "receivedAt": "2026-12-02T10:00:00.000Z"}, separators=(",", ":")).encode()


def objects(client, bucket: str, prefix: str = "spool/web/") -> dict:
    return {b.name: b.download_as_bytes() for b in client.list_blobs(bucket, prefix=prefix)}


def test_each_commit_is_one_object_and_a_put_returns_once_it_exists(gcs_bucket):
    bucket, client = gcs_bucket
    sink = GcsSink(f"gs://{bucket}/spool/web", commit_interval=0.2)
    seen_at_return = []

    async def client_task(task):
        for seq in range(3):
            await sink.put([record(task, seq)])
        seen_at_return.append(task)

    async def main():
        await sink.start()
        assert await sink.ready()
        await sink.put([record(999, 0)])
        # durable before put returned: the object is there now
        [(name, data)] = objects(client, bucket).items()
        assert data == record(999, 0) + b"\n" and OBJECT.match(name)
        await asyncio.gather(*(client_task(t) for t in range(100)))
        await sink.close()
    asyncio.run(main())
    found = objects(client, bucket)
    assert sorted(found) == sorted(sink.objects) and all(OBJECT.match(n) for n in found)
    lines = [json.loads(line) for data in found.values() for line in data.splitlines()]
    ids = sorted(line["batch"][0]["messageId"] for line in lines)
    assert ids == sorted(["999-0"] + [f"{t}-{s}" for t in range(100) for s in range(3)])
    assert len(found) <= 1 + 3 * 2 + 2  # 300 puts in a few commits: gathered, not one object each
    assert client.bucket(bucket).get_blob(sorted(found)[0]).content_type == "application/x-ndjson"


def test_gcs_failing_answers_unavailable_then_the_sink_recovers(gcs_bucket, gcs_emulator, monkeypatch):
    bucket, client = gcs_bucket
    with FaultProxy(gcs_emulator.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        sink = GcsSink(f"gs://{bucket}/spool/web", timeout=3.0)

        async def main():
            await sink.start()
            await sink.put([record(0, 0)])
            proxy.fail_for(30, 503)
            with pytest.raises(SinkUnavailable, match="GCS did not take the records"):
                await sink.put([record(1, 0)])
            sink._ready_cache = (float("-inf"), True)
            assert not await sink.ready()
            proxy.clear()
            await sink.put([record(2, 0)])
            await sink.close()
        asyncio.run(main())
    ids = sorted(json.loads(line)["batch"][0]["messageId"]
                 for data in objects(client, bucket).values() for line in data.splitlines())
    assert ids == ["0-0", "2-0"]


def test_objects_read_back_by_a_gs_backfill_name_the_source(gcs_bucket, tmp_path):
    """The objects are what `--input_files gs://BUCKET/PREFIX/*.jsonl` reads: every event stored
    or dead-lettered, with the source the collector named."""
    import duckdb

    from pipeline.main import run
    bucket, client = gcs_bucket
    sink = GcsSink(f"gs://{bucket}/spool/web")

    async def main():
        await sink.start()
        await asyncio.gather(*(sink.put([record(t, 0)]) for t in range(20)),
                             sink.put([record(99, 0, type="track", userId="u")]))  # no event name
        await sink.close()
    asyncio.run(main())
    summary = run(["--input_files", f"gs://{bucket}/spool/web/*.jsonl", "--warehouse",
                   f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"] and summary["events"] == 21 and summary["stored"] == 20
    conn = duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True)
    assert conn.execute("SELECT DISTINCT source FROM tracks").fetchall() == [("web",)]
    assert conn.execute("SELECT source, error_type FROM _dead_letters").fetchall() == [("web", "missing_event_name")]


def test_a_taken_name_is_skipped_and_a_lost_answer_counts_as_done(gcs_bucket, gcs_emulator, monkeypatch):
    """ifGenerationMatch=0, with GCS's answers played by a fault proxy (the emulator ignores
    preconditions): a 412 for a name holding other bytes moves on to the next name; a 412 for
    the retry of an upload whose answer was lost (the connection reset after the upload reached
    the emulator) finds its own bytes there, and counts as done."""
    bucket, client = gcs_bucket
    uploads = lambda method, path: method == "POST" and path.startswith("/upload/")  # noqa: E731
    with FaultProxy(gcs_emulator.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        sink = GcsSink(f"gs://{bucket}/spool/web")
        names = iter(f"spool/web/20260101T000000-1-aaaaaaaa-00000{n}.jsonl" for n in range(1, 5))
        sink._name = lambda: next(names)
        first, second, third = (f"spool/web/20260101T000000-1-aaaaaaaa-00000{n}.jsonl" for n in range(1, 4))
        client.bucket(bucket).blob(first).upload_from_string(b"someone else's\n")

        async def main():
            await sink.start()
            proxy.inject(412, match=uploads)
            await sink.put([record(1, 0)])  # first is taken: second
            proxy.inject(Fault.after_forward_reset(), Fault.status(412), match=uploads)
            await sink.put([record(2, 0)])  # third reached GCS, its answer was lost
            await sink.close()
        asyncio.run(main())
        outcomes = [outcome for method, path, outcome in proxy.requests if uploads(method, path)]
    assert objects(client, bucket) == {first: b"someone else's\n", second: record(1, 0) + b"\n",
                                       third: record(2, 0) + b"\n"}
    assert list(sink.objects) == [second, third] and sink.objects_written == 2
    assert outcomes[0] == "412" and "after_forward_reset" in outcomes and outcomes[-1] == "412", outcomes
