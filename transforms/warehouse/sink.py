"""Composite sinks: events, dead letters and forwarding's outcomes into the warehouse named by a URL.

Events are grouped into bounded batches and each batch is written in bulk: in streaming by
the Batches step (BatchElements or GroupIntoBatches), in a batch run by the writer itself
(WriteEventsFn), which commits each batch beside the bundle. Events the warehouse cannot take
come back as `insert_failed` dead letters; events already stored are counted as the
`duplicate` policy drop, so a re-run conserves without writing twice.
"""
import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindows

from transforms import gcpause, metrics, parking, switching
from transforms.experiments.settings import ExperimentSettings
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import EventCoder, JsonCoder, Rejection
from transforms.warehouse import planner, shred, split_url

DEFAULT_BATCH_SIZE = 5000
# A batch run's default (warehouse.batch_size unset): a quarter of the commits, and each batch's
# fixed costs (a transaction, a statement per table) spread over more events; memory is still
# bounded by the batch, not the input (docs/benchmarks.md has the measurements).
BACKFILL_BATCH_SIZE = 20000
# A batch run's first batch into DuckDB: the tables a run creates are planned in Python, event by
# event, and only a batch after the one that created them is written in bulk (shred.py), so the
# first batch is cut short and the next ones find most tables made (docs/benchmarks.md).
FIRST_BATCH_SIZE = 1000


class WarehouseSettings(NamedTuple):
    url: str                      # duckdb:///path or bigquery://PROJECT/DATASET (pipeline.options)
    max_columns: int = planner.DEFAULT_MAX_COLUMNS
    flatten_depth: int = planner.DEFAULT_FLATTEN_DEPTH
    batch_size: int = DEFAULT_BATCH_SIZE
    declared_types: Optional[dict] = None  # {table or "*": {pointer: type}} from the contracts
    bigquery_endpoint: Optional[str] = None  # an emulator's URL; None: Google's API
    bigquery_location: str = "US"
    bigquery_write_method: str = "insert_all"  # or "load" (pipeline.main picks by --streaming)
    duckdb_memory_limit_mb: Optional[int] = None  # the embedded warehouse's memory budget; None: its default
    duckdb_shred_in_bulk: bool = True  # DuckDB extracts the columns of events whose fields have columns (shred.py)
    max_new_columns: int = planner.DEFAULT_MAX_NEW_COLUMNS  # columns one batch may add to a table
    experiments: Optional[ExperimentSettings] = None  # exposures also get an experiment_exposures row; None: none


def open_backend(settings: WarehouseSettings, read_only: bool = False):
    """The backend for a warehouse URL; called in DoFn.setup(), never while building the graph.
    read_only: for reads that must create nothing (a replay's dry run); a warehouse that does not
    exist raises LookupError."""
    kind, *place = split_url(settings.url)
    if kind == "duckdb":
        from transforms.warehouse.duckdb_backend import DuckDBWarehouse
        memory = {"memory_limit_mb": settings.duckdb_memory_limit_mb} if settings.duckdb_memory_limit_mb else {}
        return DuckDBWarehouse(*place, settings.max_columns,
                               settings.flatten_depth, settings.declared_types,
                               max_new_columns=settings.max_new_columns, experiments=settings.experiments,
                               shred_in_bulk=settings.duckdb_shred_in_bulk, **memory).open(read_only)
    from transforms.warehouse.bigquery_backend import BigQueryWarehouse
    return BigQueryWarehouse(*place, settings.bigquery_endpoint, settings.bigquery_location,
                             settings.max_columns, settings.flatten_depth, settings.declared_types,
                             settings.bigquery_write_method, max_new_columns=settings.max_new_columns,
                             experiments=settings.experiments).open(read_only)


@contextmanager
def opened_backend(settings: WarehouseSettings, read_only: bool = False):
    """The backend, open for the block (the launcher's own reads and writes, e.g. replay's)."""
    backend = open_backend(settings, read_only)
    try:
        yield backend
    finally:
        backend.close()


class WarehouseFn(beam.DoFn):
    """Opens the backend in setup() (never pickled with the DoFn), closes it in teardown();
    keep_open: parks it for the next setup instead (local streaming; see transforms.parking)."""

    def __init__(self, settings: WarehouseSettings, keep_open: bool = False):
        self._settings, self._keep_open = settings, keep_open
        self._backend = None

    def setup(self):
        self._backend = (self._keep_open and parking.take(repr(self._settings))) or open_backend(self._settings)

    def teardown(self):
        if self._backend is not None:
            if self._keep_open:
                parking.park(repr(self._settings), self._backend)
            else:
                self._backend.close()
            self._backend = None

    def _count_calls(self):
        """A backend that counts its API calls (BigQuery) reports them as `<kind>` counters."""
        take = getattr(self._backend, "take_calls", None)
        for kind, count in (take() if take else {}).items():
            metrics.inc(f"api_calls.{kind}", count)


class WriteEventsFn(WarehouseFn, FallibleFn):
    """Writes batches of Events; the events the warehouse refused come back as dead letters.

    Streaming: each element is a batch (Batches made it). A batch run (`batch_run`): elements
    are Events, gathered here into batches of `batch_size` within the bundle. Beam samples each
    PCollection's elements to estimate their sizes, and a sampled batch was pickled whole, every
    event of it (5% of a run: most batches of a run are among the first sampled). Where the
    backend prepares a batch apart from committing it (DuckDB), each batch is prepared (planned,
    its Arrow tables made) on the bundle's thread and committed on a thread of the DoFn's own,
    mostly DuckDB, which holds the GIL only to open its Arrow scans (a little Python reads the
    structure of the events shredded in bulk), while the bundle's thread goes on reading,
    decoding and normalizing the next batch. One batch at most is in
    flight: the next is prepared once the last is committed, and finish_bundle waits for the
    last, so a bundle ends with all its events written or dead-lettered, as it does in
    streaming. Counters and dead letters are emitted on the bundle's thread (Beam's metrics are
    per thread)."""
    STAGE = "warehouse"

    def __init__(self, settings: WarehouseSettings, keep_open: bool = False, batch_run: bool = False):
        super().__init__(settings, keep_open)
        self._batch_run = batch_run
        self._committer = self._in_flight = None  # in flight: (batch, its PreparedWrite, the commit's Future)
        self._buffer = []
        self._limit = settings.batch_size  # the next batch's size
        # read ahead (DuckDB): the buffered events' shred_events, and the committer's reads of their
        # structures, a part at a time, while the batch fills
        self._shreds, self._parts = [], []

    def setup(self):
        super().setup()
        if self._batch_run and hasattr(self._backend, "commit_prepared"):
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="sluice-commit")
            switching.shorten()
            self._limit = min(FIRST_BATCH_SIZE, self._settings.batch_size)

    def teardown(self):
        try:
            if self._committer is not None:
                try:
                    self._abandon()
                finally:
                    self._committer.shutdown(wait=True)
                    self._committer = None
                    switching.restore()
        finally:
            super().teardown()

    def start_bundle(self):
        self._abandon()
        self._buffer, self._shreds, self._parts = [], [], []

    def _abandon(self):
        """A batch left in flight by a bundle that failed: its commit awaited and the warehouse
        released (the retried bundle writes its events again; stored ones are duplicates then)."""
        if self._in_flight is not None:
            _, prepared, committed = self._in_flight
            self._in_flight = None
            committed.exception()
            self._backend.release_events(prepared)

    def process(self, element):
        if not self._batch_run:
            yield from super().process(element)  # a batch
            return
        self._buffer.append(element)
        if self._committer is not None and self._shreds is not None \
                and len(self._buffer) - len(self._shreds) >= shred.STRUCTURE_ROWS:
            self._read_ahead()
        if len(self._buffer) >= self._limit:
            self._limit = min(self._limit * 4, self._settings.batch_size)
            yield from self._write(*self._cut())

    def _read_ahead(self):
        """The structure of the events buffered since the last part, read on the committer's thread
        (after the commit in flight, if any) while the bundle's thread goes on filling the batch:
        the commit of a batch then finds its structure read (DuckDBWarehouse.read_structures). If
        making a part's bulk form fails, the batch is not read ahead: prepare_events makes it again,
        where a failure is the batch's dead letters (FallibleFn), never a failed bundle."""
        try:
            part = self._backend.shred_events(self._buffer[len(self._shreds):])
        except Exception:  # noqa: BLE001 - met again, and dead-lettered, in _write
            self._shreds = None
            return
        self._shreds += part
        self._parts.append(self._committer.submit(self._backend.read_structures, part))

    def _cut(self) -> tuple:
        """(the buffered batch, its shred_events, its structures read ahead) and an empty buffer."""
        if self._committer is None:
            batch, self._buffer = self._buffer, []
            return batch, None, None
        if self._shreds is not None and len(self._shreds) < len(self._buffer):
            self._read_ahead()
        batch, shreds, parts = self._buffer, self._shreds, self._parts
        self._buffer, self._shreds, self._parts = [], [], []
        if shreds is None:  # not read ahead (_read_ahead)
            return batch, None, None
        return batch, shreds, functools.partial(_read_parts, parts)

    def finish_bundle(self):
        outputs = []
        if self._buffer:
            outputs.extend(self._write(*self._cut()))
        if self._in_flight is not None:
            outputs.extend(self._settle())
        for output in outputs:  # dead letters only (the main output carries nothing)
            yield pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))

    def _write(self, batch, shreds=None, structures=None):
        if self._committer is None:
            yield from self.emit(batch, self.attempt)
            return
        if self._in_flight is not None:
            yield from self._settle()
        try:
            with gcpause.paused():
                prepared = self._backend.prepare_events(batch, shreds, structures)
        except Exception as exc:  # noqa: BLE001 - the batch's dead letters, as FallibleFn makes them
            yield from self.emit(batch, lambda _: _raise(exc))
            return
        committed = Future()
        try:
            committed = self._committer.submit(self._backend.commit_prepared, prepared)
        except Exception as exc:  # noqa: BLE001 - settled like a failed commit: written one event at a time
            committed.set_exception(exc)
        self._in_flight = batch, prepared, committed

    def _settle(self):
        """The in-flight batch's outputs once committed (all or nothing, as FallibleFn's)."""
        batch, prepared, committed = self._in_flight
        self._in_flight = None

        def finished(_):
            with gcpause.paused():
                return self._account(self._backend.finish_events(prepared, committed.exception()))
        return self.emit(batch, finished)

    def attempt(self, batch):
        with gcpause.paused():
            return self._account(self._backend.write_events(batch))

    def _account(self, result) -> list:
        """Count a batch's WriteResult; its refused events become `insert_failed` dead letters."""
        refused = [self.dead_letter(Rejection("insert_failed", f"the warehouse refused the event: {error}"),
                                    event, event.body.get("messageId"))
                   for event, error in result.failed]
        self._count_calls()
        metrics.inc("stored", len(result.stored))
        metrics.inc("stage.warehouse.stored", len(result.stored))
        if result.shredded:  # DuckDB wrote them from their JSON (transforms.warehouse.shred)
            metrics.inc("stored_in_bulk", result.shredded)
        if result.duplicates:
            metrics.dropped("duplicate", len(result.duplicates))
        for table, count in result.rows.items():
            metrics.inc(f"rows.{table}", count)
        for table, count in result.type_conflicts.items():
            if count:
                metrics.inc(f"type_conflicts.{table}", count)
        for table, count in result.capped.items():
            if count:
                metrics.inc(f"column_cap.{table}", count)
        return refused

    def failed_inputs(self, batch) -> list:
        return list(batch)


def _raise(exc):
    raise exc


def _read_parts(parts: list):
    """The parts' structures merged, called by the commit on the committer's thread, after the
    parts (one thread, first come first served); None when one is missing or failed (the commit
    then reads the batch's structure itself)."""
    if not all(part.done() and part.exception() is None and part.result() is not None for part in parts):
        return None
    return shred.merge_groups([part.result() for part in parts])


class WriteDeadLettersFn(WarehouseFn):
    """Dead letters have nowhere further to go: a failure here fails the run, loudly."""

    def process(self, batch):
        metrics.inc("rows._dead_letters", self._backend.write_dead_letters(batch))
        self._count_calls()


class WriteDeliveriesFn(WarehouseFn):
    """Forwarding's outcome rows -> `_deliveries`. Like dead letters, a failure here fails the
    bundle (retried; the rows' ids keep a rewrite to one row). The backend is opened on the
    first batch, not in setup(): the step is in every graph (stable step names) and most runs
    forward nowhere, so most never open it (for BigQuery an open is an API call)."""

    def setup(self):
        self._backend = None

    def process(self, batch):
        if self._backend is None:
            super().setup()
        metrics.inc(f"rows.{planner.DELIVERIES_TABLE}", self._backend.write_deliveries(batch))
        self._count_calls()


class Batches(beam.PTransform):
    """Bounded batches.

    Batch runs, and streaming on the local runner: BatchElements, within each bundle (no
    shuffle, no state). Beam's local streaming runner never fires GroupIntoBatches' buffering
    timer (measured with Beam 2.77: a half-full batch waits forever), while its bundles are
    small (one Pub/Sub pull, about 10 messages), so each bundle is written as it comes.
    Streaming elsewhere (Dataflow): GroupIntoBatches over a few shard keys, written when a
    batch is full or has waited `max_wait` seconds, so a quiet stream still lands within
    seconds and a busy one is written in bulk. GroupIntoBatches keeps what it buffers in
    state with a coder of Beam's choosing (it pickles a NamedTuple), so elements are buffered as
    bytes of `coder`, an encoding of Sluice's own that the next version can read (--update)."""

    def __init__(self, size: int, streaming: bool = False, max_wait: float = 5.0, shards: int = 4,
                 min_size: int = None, clock=time.time, per_bundle: bool = None, coder=None):
        super().__init__()
        self._size, self._streaming, self._max_wait, self._shards = size, streaming, max_wait, shards
        self._coder = coder or _AsIs()
        self._min_size = size if min_size is None else min_size
        self._clock = clock  # processing time; tests pass TestStream's
        self._per_bundle = not streaming if per_bundle is None else per_bundle

    def expand(self, elements):
        if self._per_bundle:
            minimum = self._min_size if not self._streaming else 1
            return elements | "BatchElements" >> beam.BatchElements(min_batch_size=minimum,
                                                                      max_batch_size=self._size)
        return (elements
                | "Shard" >> beam.Map(_ShardKey(self._shards, self._coder.encode)).with_output_types(Tuple[int, Any])
                | "GroupIntoBatches" >> beam.GroupIntoBatches(self._size, self._max_wait, self._clock)
                | "DropKeys" >> beam.Map(_decode_all, self._coder.decode))


class _ShardKey:
    """Spreads elements over `shards` keys (each key's batches are written in order), encoded."""

    def __init__(self, shards: int, encode):
        self._shards, self._encode, self._next = shards, encode, 0

    def __call__(self, element) -> tuple:
        self._next = (self._next + 1) % self._shards
        return self._next, self._encode(element)


def _decode_all(keyed_batch, decode) -> list:
    return [decode(item) for item in keyed_batch[1]]


class _AsIs:
    """No encoding: elements Beam's own coders carry as they are (ints, in tests)."""

    @staticmethod
    def encode(element):
        return element

    @staticmethod
    def decode(element):
        return element


class WriteWarehouse(beam.PTransform):
    """Normalized Events -> warehouse tables; returns the `insert_failed` dead letters."""

    def __init__(self, settings: WarehouseSettings, streaming: bool = False, max_wait: float = 5.0,
                 per_bundle: bool = None, keep_open: bool = False):
        super().__init__()
        self._settings, self._streaming, self._max_wait, self._per_bundle = settings, streaming, max_wait, per_bundle
        self._keep_open = keep_open  # local streaming: see transforms.parking

    def expand(self, events):
        # A batch run batches in the writer and commits on a thread of its own (see WriteEventsFn).
        if self._streaming:
            events = events | "Batch" >> Batches(self._settings.batch_size, self._streaming, self._max_wait,
                                                  per_bundle=self._per_bundle, coder=EventCoder())
        return apply_fallible(events, WriteEventsFn(self._settings, self._keep_open, batch_run=not self._streaming),
                              main="written", label="Write").dead_letters


class _WriteRecords(beam.PTransform):
    """Records (JSON-ready dicts) of one of Sluice's own tables -> that table, in batches; WRITER
    is the DoFn that writes a batch."""
    WRITER = None

    def __init__(self, settings: WarehouseSettings, streaming: bool = False, max_wait: float = 5.0,
                 per_bundle: bool = None, keep_open: bool = False):
        super().__init__()
        self._settings, self._streaming, self._max_wait, self._per_bundle = settings, streaming, max_wait, per_bundle
        self._keep_open = keep_open  # local streaming: see transforms.parking

    def expand(self, records):
        return (records
                | "Batch" >> Batches(self._settings.batch_size, self._streaming, self._max_wait, min_size=1,
                                     per_bundle=self._per_bundle, coder=JsonCoder())
                | "Write" >> beam.ParDo(self.WRITER(self._settings, self._keep_open)))


class WriteDeadLetters(_WriteRecords):
    """Dead-letter records -> the warehouse's `_dead_letters` table."""
    WRITER = WriteDeadLettersFn


class WriteDeliveries(_WriteRecords):
    """Forwarding's outcome rows (transforms.destinations.deliveries) -> the warehouse's
    `_deliveries` table."""
    WRITER = WriteDeliveriesFn
