"""`python -m pipeline replay`: send dead letters' original payloads through the pipeline again,
once their cause is fixed (a contract, the config, a destination).

    python -m pipeline replay --warehouse URL [--config PATH] [--error_type T,T] [--since TIME]
        [--until TIME] [--source GLOB] [--dead_letter_files PATTERN] [--dry_run] [Beam options]

--dry_run prints how many dead letters the selection names, by error type and source, and
replays and writes nothing (the warehouse must exist). --error_type takes the codes of
docs/warehouse.md#dead-letters, comma-separated. The last line says how many were replayed, and
of them how many were fixed and how many failed again; _dead_letters_view shows each original
failure once with its latest state (open, failed_again, fixed).

Dead letters come from the warehouse's `_dead_letters` table, or from dead-letter files
(newline-delimited JSON records, e.g. an export) with --dead_letter_files; both are read by
the pipeline's workers, not here. Each record becomes the message it was: its payload bytes,
its attributes plus `sluice_replay_of` and `sluice_replay_origin` (the original failure), its
source and receive time. A `delivery_failed`
record is replayed to its destination only (its `integrations` narrowed to it).

After the run succeeds, the replayed dead letters are recorded in `_replays`, and a later
replay skips them. A record that fails again becomes a new dead letter with its new error
(its position names this replay run, so it is a row of its own and can be replayed later).
Only dead letters that failed before the replay started are selected.

One replay at a time per warehouse: a replay takes the warehouse's replay lease before it
reads anything, and while another replay holds it, exits 2 naming that one (its run id, start,
host and pid). A replay that stopped without giving its lease up (killed, its machine gone)
holds it for at most LEASE_SECONDS more.
"""
import argparse
import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline import options as options_module
from pipeline.errors import UsageError, did_you_mean
from transforms import deadletter
from transforms.messages import RawMessage
from transforms.timeutil import format_time, parse_time
from transforms.warehouse import replays
from transforms.warehouse.replays import Selection, as_record
from transforms.warehouse.sink import WarehouseFn, open_backend, opened_backend

REPLAY_ATTRIBUTE = replays.REPLAY_OF
# A running replay renews its lease every LEASE_SECONDS / 4; one that stops renewing (killed, its
# machine gone) leaves a lease that lapses this long after the last renewal.
LEASE_SECONDS = 600


def parse_replay_args(argv: list) -> tuple:
    """(Selection without `before`, dead-letter file pattern or None, dry run?, the remaining argv)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline replay", add_help=False, allow_abbrev=False)
    parser.add_argument("--error_type", default="")
    parser.add_argument("--since")
    parser.add_argument("--until")
    parser.add_argument("--source")
    parser.add_argument("--dead_letter_files")
    parser.add_argument("--dry_run", action="store_true")
    known, rest = parser.parse_known_args(argv)
    _check_unknown(rest, [o for action in parser._actions for o in action.option_strings])
    for name in ("input_files", "input_subscription", "input_topic"):
        if any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in rest):
            raise UsageError(f"--{name}: replay reads dead letters (from --warehouse, or --dead_letter_files)")
    times = {}
    for name in ("since", "until"):
        value = getattr(known, name)
        try:
            times[name] = format_time(parse_time(value)) if value is not None else None
        except ValueError:
            raise UsageError(f"--{name} {value!r}: expected an ISO-8601 time such as 2026-11-25T00:00:00Z") from None
    types = tuple(t.strip() for t in known.error_type.split(",") if t.strip())
    for name in types:
        if name not in deadletter.ERROR_TYPES:  # a typo would select nothing: "would replay 0"
            raise UsageError(f"--error_type {name!r}: not an error type{did_you_mean(name, deadletter.ERROR_TYPES)} "
                             "(docs/warehouse.md#dead-letters lists them)")
    selection = Selection("", types, times["since"], times["until"], known.source)
    return selection, known.dead_letter_files, known.dry_run, rest


def _check_unknown(rest: list, own: list) -> None:
    """An option neither replay's nor Beam's (nor the job's): one line offering the closest of
    both, pointing to replay's --help (options.parse_args, which sees only the rest, knows
    neither replay's names nor its help)."""
    beam = options_module._beam_parser()  # noqa: SLF001 -- the parser parse_args uses, for the same names
    _, unknown = beam.parse_known_args(rest)
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if name.startswith("--"):
            raise UsageError(f"unrecognized option {name}{did_you_mean(name, [*own, *beam.option_names()])} "
                             "(see python -m pipeline replay --help)")


def to_raw_message(record: dict, run: str) -> RawMessage:
    """The message a dead-letter record was made from, marked as this run's replay of it."""
    data = deadletter.decode_payload(record["payload"], record.get("payload_encoding") or "utf-8")
    if record.get("error_stage") == "forwarding" and record.get("destination"):
        data = _only_to(data, record["destination"])
    elif record.get("error_stage") == "experiments":  # refused for the warehouse only: it was forwarded then
        data = _only_to(data, None)
    attributes = {**(record.get("attributes") or {}), REPLAY_ATTRIBUTE: record["dead_letter_id"],
                  replays.REPLAY_ORIGIN: replays.origin_of(record)}
    position = f"replay:{record['dead_letter_id']}:{run}"
    return RawMessage(data, attributes, record.get("source") or "replay", record.get("received_at"), position)


def _only_to(data: bytes, destination: str) -> bytes:
    """The event with its integrations object narrowed to one destination (None: to none)."""
    event = json.loads(data)
    event["integrations"] = {"All": False, **({destination: True} if destination else {})}
    return json.dumps(event).encode("utf-8")


class _WarehouseReaderFn(WarehouseFn):
    """A worker's reader of the selection (the warehouse opened in setup(), by WarehouseFn)."""

    def __init__(self, settings, selection: Selection, run: str):
        super().__init__(settings)
        self._selection, self._run = selection, run


class SelectDeadLettersFn(_WarehouseReaderFn):
    """The selection, read from the warehouse by a worker, as RawMessages."""

    def process(self, _):
        for record in self._backend.select_dead_letters(self._selection):
            yield to_raw_message(record, self._run)


def read_records(handle, path: str):
    """Dead-letter records of a file, as the warehouse would give them back: JSON columns as
    objects (an export may hold them as strings), times in the canonical UTC form. A line that
    is not such a record raises UsageError naming --dead_letter_files PATH:LINE."""
    for number, line in enumerate(iter(handle.readline, b""), 1):
        if not line.strip():
            continue
        try:
            yield _record(line)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problem = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise UsageError(f"--dead_letter_files {path}:{number}: not a dead-letter record ({problem})") from None


def _record(line: bytes) -> dict:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    for name in ("dead_letter_id", "payload"):  # what a replay reads of every record
        if not isinstance(record[name], str):
            raise ValueError(f"{name} is not a string")
    record = as_record(record)
    for name in ("received_at", "failed_at"):  # text in a file: "2026-11-25 10:00:00+00:00" too
        if record.get(name):
            record[name] = format_time(parse_time(str(record[name]).replace(" ", "T", 1)))
    return record


class ReadDeadLetterFilesFn(_WarehouseReaderFn):
    """Records of dead-letter files in the selection and not replayed yet, as RawMessages."""

    def process(self, readable_file):
        with readable_file.open() as handle:
            records = unreplayed(self._backend, self._selection, read_records(handle, readable_file.metadata.path))
        for record in records:
            yield to_raw_message(record, self._run)


def unreplayed(backend, selection: Selection, records) -> list:
    """The records (of a dead-letter file) the selection keeps and the warehouse has not replayed."""
    kept = [r for r in records if selection.keeps(r)]
    done = backend.replayed([r["dead_letter_id"] for r in kept])
    return [r for r in kept if r["dead_letter_id"] not in done]


class ReadDeadLetters(beam.PTransform):
    """The dead letters to replay, as RawMessages: from the warehouse, or from files."""

    def __init__(self, settings, selection: Selection, run: str, files: str = None):
        super().__init__()
        self._settings, self._selection, self._run, self._files = settings, selection, run, files

    def expand(self, pbegin):
        if self._files:
            messages = (pbegin | "Patterns" >> beam.Create([self._files]) | "Match" >> fileio.MatchAll()
                        | "Open" >> fileio.ReadMatches()
                        | "ReadRecords" >> beam.ParDo(ReadDeadLetterFilesFn(self._settings, self._selection, self._run)))
        else:
            messages = (pbegin | "Start" >> beam.Create([None])
                        | "Select" >> beam.ParDo(SelectDeadLettersFn(self._settings, self._selection, self._run)))
        return messages | "Spread" >> beam.Reshuffle()


def new_run() -> tuple:
    """(run id, the replay's start time: only dead letters that failed before it are selected)."""
    return uuid.uuid4().hex[:12], format_time(datetime.now(timezone.utc))


def selected(settings, selection: Selection, files: str = None, read_only: bool = False) -> list:
    """The records the selection names now, read here (a dry run, read_only: nothing is created,
    not even the warehouse; after a successful run, the ids it replayed: the same selection,
    read again)."""
    if read_only and settings.url.startswith("duckdb:///") and not os.path.exists(settings.url[len("duckdb:///"):]):
        raise UsageError(f"--warehouse {settings.url}: no such DuckDB file (a dry run reads an existing warehouse "
                         "and creates nothing)")
    try:
        backend = open_backend(settings, read_only=read_only)
    except LookupError as exc:  # a read-only open of a BigQuery dataset that does not exist (only the open)
        raise UsageError(f"--warehouse {settings.url}: {exc} (a dry run creates nothing)") from None
    try:
        if not files:
            return backend.select_dead_letters(selection)
        records = []
        for match in FileSystems.match([files])[0].metadata_list:
            with FileSystems.open(match.path) as handle:
                records += [r for r in read_records(handle, match.path) if selection.keeps(r)]
        return unreplayed(backend, selection, records)
    finally:
        backend.close()


def describe(records: list) -> str:
    """What a dry run would replay: counts by error type and by source."""
    lines = [f"would replay {len(records):,} dead letters"]
    for key in ("error_type", "source"):
        counts = Counter(r.get(key) or "?" for r in records)
        lines += [f"  {key} {value}: {count:,}" for value, count in counts.most_common()]
    return "\n".join(lines)


def outcome(summary: dict) -> str:
    """A replay's last line: how many it replayed, and of them how many failed again."""
    replayed, again = summary["replayed"], summary.get("failed_again", 0)
    line = f"replayed {replayed:,} dead letters (recorded in _replays): {replayed - again:,} fixed"
    return line + (f", {again:,} failed again (new dead letters in _dead_letters)" if again else "")


def failed_again(settings, ids: list, started_at: str) -> int:
    """How many of the replayed dead letters (ids) made new dead letters in the replay started at
    started_at: counted by the new ones' REPLAY_OF, since one record can make several (a batch
    whose events each fail again, a record failing for two destinations). The warehouse keeps
    every dead letter (a --dead_letter_topic gets copies), so it is asked, after the run."""
    wanted = set(ids)
    since = Selection(before="9999-12-31T00:00:00Z", since=started_at)  # any time after the start
    with opened_backend(settings) as backend:
        letters = backend.select_dead_letters(since)
    return len({parent for parent in ((r.get("attributes") or {}).get(REPLAY_ATTRIBUTE) for r in letters)
                if parent in wanted})


def record(settings, ids: list, run: str) -> int:
    with opened_backend(settings) as backend:
        return backend.record_replays(ids, run)


def _lease_selection(selection: Selection, files: str = None) -> str:
    """The selection as the lease records it (JSON), for whoever finds the lease taken."""
    return json.dumps({**selection._asdict(), "error_types": list(selection.error_types),
                       "dead_letter_files": files}, sort_keys=True)


def holder_name() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@contextmanager
def leased(settings, selection: Selection, run: str, files: str = None, seconds: int = LEASE_SECONDS):
    """Hold the warehouse's replay lease for the block (renewed meanwhile, released at the end,
    also when the block fails: a failed run records nothing and can be run again at once).
    Raises UsageError naming the replay holding it. Conservative: any live replay of the same
    warehouse holds it, whatever its selection."""
    with opened_backend(settings) as backend:
        other = backend.take_replay_lease(run, holder_name(), _lease_selection(selection, files), seconds)
    if other is not None:
        raise UsageError(f"replay: another replay (run {other.run}, started {other.started_at} by {other.holder}) "
                         f"is replaying dead letters of this warehouse; wait for it to end, then run again (if it "
                         f"has stopped, its lease lapses at {other.expires_at})")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(settings, run, seconds, stop), name=f"replay-lease-{run}",
                               daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            with opened_backend(settings) as backend:
                backend.release_replay_lease(run)
        except Exception as exc:  # noqa: BLE001 -- must not hide the run's own outcome; the lease lapses
            logging.getLogger(__name__).warning("replay %s: releasing its lease failed (%s); it lapses within "
                                                "%d seconds", run, exc, seconds)


def _renew(settings, run: str, seconds: int, stop: threading.Event) -> None:
    """Renew the lease until told to stop. A failed renewal is only logged: the lease lasts
    `seconds`, so the next attempts have time; one the run has lost is logged as lost."""
    log = logging.getLogger(__name__)
    while not stop.wait(seconds / 4):
        try:
            with opened_backend(settings) as backend:
                if not backend.renew_replay_lease(run, seconds):
                    log.warning("replay %s: its lease lapsed and may be another replay's now: that replay "
                                "can select dead letters this one is replaying", run)
                    return
        except Exception as exc:  # noqa: BLE001 -- any failure: keep the run going, try again later
            log.warning("replay %s: renewing its lease failed (%s); trying again", run, exc)
