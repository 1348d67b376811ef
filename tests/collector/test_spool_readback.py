"""A spool written by SpoolSink, read back by the real job (`--input_files 'DIR/*.jsonl'`):
every event stored or dead-lettered, each naming the source the collector wrote."""
import asyncio
import json

from collector.sinks.spool import SpoolSink
from pipeline.main import run
from tests.conftest import rows

RECEIVED = "2026-12-02T10:00:00.123Z"


def envelope(source: str, events: list) -> bytes:
    """A record as the collector builds it: the source's name on the envelope only (decode gives
    it to each event, which makes the rows' `source` column)."""
    batch = [{**e, "receivedAt": RECEIVED} if isinstance(e, dict) else e for e in events]
    return json.dumps({"batch": batch, "source": source, "receivedAt": RECEIVED,
                       "sentAt": "2026-12-02T10:00:00.000Z", "context": {"library": {"name": "analytics.js"}}},
                      separators=(",", ":")).encode()


def track(i, **extra):
    return {"type": "track", "event": "Clicked", "userId": f"u{i}", "messageId": f"t{i}",
            "timestamp": "2026-12-02T09:59:59.000Z", **extra}


RECORDS = [
    envelope("web", [track(1), track(2), {"type": "identify", "userId": "u1", "messageId": "i1",
                                          "traits": {"plan": "pro"}}]),
    envelope("web", [{"type": "track", "userId": "u3", "messageId": "bad-name"},     # no event name
                     {"type": "track", "event": "Clicked", "messageId": "bad-id"},   # no identity
                     "not an event"]),                                               # not an object
    envelope("app", [track(4), {"type": "page", "anonymousId": "a5", "name": "Home", "messageId": "p5"}]),
    envelope("app", [track(6, event="")]),                                           # an empty name
    envelope("web", ["not an event"]),  # the same bad member at the same line of another file
]


def test_every_spooled_event_is_stored_or_dead_lettered_with_its_source(tmp_path):
    spool = tmp_path / "spool"

    async def write():
        sink = SpoolSink(spool, max_bytes=1)  # a file per record: each its line 1
        await sink.start()
        for record in RECORDS:  # one at a time: each commit closes its file
            await sink.put([record])
        await sink.close()
        return list(sink.closed_files)
    files = asyncio.run(write())
    assert len(files) == len(RECORDS)
    (tmp_path / "sluice.yaml").write_text("")
    summary = run(["--input_files", f"{spool}/*.jsonl", "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"], summary
    assert summary["read"] == len(RECORDS) and summary["events"] == 10
    assert summary["stored"] == 5 and sum(summary["dead_lettered"].values()) == 5, summary

    import duckdb
    conn = duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True)
    stored = {r["message_id"]: r["source"] for table in ("tracks", "identifies", "pages")
              for r in rows(conn, f"SELECT message_id, source FROM {table}")}
    # the collector's top-level `source` is an ordinary column, named after the source
    assert stored == {"t1": "web", "t2": "web", "i1": "web", "t4": "app", "p5": "app"}
    letters = rows(conn, "SELECT source, error_type, message_id FROM _dead_letters ORDER BY message_id")
    assert {r["source"] for r in letters} == {"web", "app"}  # never "file:..."
    by_id = {r["message_id"]: r["source"] for r in letters if r["message_id"]}
    assert by_id == {"bad-name": "web", "bad-id": "web", "t6": "app"}, letters
    # two identical bad members, each line 1 of its file: two dead letters, not one
    assert sorted(r["error_type"] for r in letters if not r["message_id"]) == ["not_an_object"] * 2
