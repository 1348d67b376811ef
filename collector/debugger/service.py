"""The debugger as the collector's app sees it: installed once the collector listens.

`Debugger.install(app, address)` decides access from where the collector listens
(collector.debugger.settings.access), then, when on:
- sets `app.on_accepted`, which the app calls with each record its sink has made durable, its
  source and its count: the rate is applied at once, and what it keeps is inspected after the
  answer is on its way (loop.call_soon; collector.debugger.inspect);
- `app.debugger = self`: the app sends /debugger paths to `http` (collector.debugger.api) and
  lets `watch` wrap each POST to an event path, to see the requests it refuses: the status and
  the JSON refusal (code, message) it sends, and a bounded preview of the body it read.
Embedded mode also sets `loader.on_loaded = debugger.fates(cursor).loaded` (collector.debugger.fates);
--sink mode with `debugger.warehouse` calls `look_up_in_warehouse` (collector.debugger.bigquery_fates).

Off (listening beyond loopback without a token, or `debugger.enabled: false`): nothing is
wrapped or recorded, and /debugger paths answer 403 saying why.
"""
import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import parse_qs

import orjson

from collector.debugger import api
from collector.debugger.preview import PREVIEW_RAW_BYTES, preview
from collector.debugger.settings import DebuggerSettings, access
from collector.debugger.store import Store
from collector.requests import Refusal, basic_user, key_before_body, received_at, route

_LOG = logging.getLogger("sluice.collector.debugger")
_NOT_EVENTS = (404, 405)   # a refusal of the path or method: no event was meant


class Debugger:
    def __init__(self, settings, contracts=None, limits=None, config=None):
        """settings: the CollectorSettings (its sources and its `debugger`); contracts: the
        loaded ContractSettings; limits: the DecodeLimits; config: the pipeline's Config in
        embedded mode (its consent and rules tell drops apart). What checks events (and so
        imports the pipeline's stages, and Beam) is built only once the debugger is on."""
        self.collector, self.config = settings, config
        self._contracts, self._limits = contracts, limits
        self.settings: DebuggerSettings = getattr(settings, "debugger", None) or DebuggerSettings()
        self.store = Store(self.settings)
        self.inspector = None
        self.on, self.token, self.why_off = False, None, "the collector has not started"
        self.app = self.loop = None
        self.warehouse_fates = None   # --sink mode with debugger.warehouse: the BigQuery poller
        self._used = None             # when the API or page was last asked (time.monotonic())

    def install(self, app, address) -> None:
        """Called once the collector listens (collector.server's on_listening), before any request."""
        host = address[0]
        self.on, self.token = access(self.settings, host)
        self.app, self.loop = app, asyncio.get_running_loop()
        app.debugger = self
        if not self.on:
            self.why_off = ("debugger.enabled is false in the config" if not self.settings.enabled else
                            f"the collector listens on {host}, beyond loopback, and debugger.token is not set")
            _LOG.info("debugger off: %s", self.why_off)
            return
        from collector.debugger.inspect import Inspector
        from transforms.decode import DecodeLimits
        self.inspector = Inspector(self.store, self._contracts, self._limits or DecodeLimits())
        app.on_accepted = self._accepted
        app.metrics.registry.register(DebuggerMetrics(self))
        _LOG.info("debugger at /debugger (%s; the last %d events per source)",
                  "token required" if self.token else "loopback only, no token", self.settings.max_events_per_source)

    def fates(self, cursor):
        """The loader's hook (collector.debugger.fates.Fates) reading the warehouse through `cursor`."""
        from collector.debugger.fates import DropReplay, Fates
        config = self.config
        return Fates(self.store, cursor, config and DropReplay(config.consent, config.transforms))

    def look_up_in_warehouse(self) -> None:
        """--sink mode: with `debugger.warehouse` set, poll the BigQuery dataset the pipeline job
        writes for the pending entries' fates (collector.debugger.bigquery_fates), on a thread."""
        if not self.on or not self.settings.warehouse:
            return
        from collector.debugger.bigquery_fates import BigQueryFates
        self.warehouse_fates = BigQueryFates(self.store, self.settings, watched=self.watched).start()

    def watched(self) -> bool:
        """Whether someone looks: a page's stream is open, or the API or page was asked within
        lookup_minutes. A collector nobody watches costs no warehouse query."""
        used = self._used
        return bool(self.store.listeners) or (
            used is not None and time.monotonic() - used < self.settings.lookup_minutes * 60)

    def close(self) -> None:
        if self.warehouse_fates is not None:
            self.warehouse_fates.stop()

    async def http(self, scope, receive, send) -> None:
        self._used = time.monotonic()
        await api.answer(self, scope, receive, send)

    # -- what the collector accepted ---------------------------------------------------------
    def _accepted(self, record: bytes, source: str, events: int) -> None:
        """The app's hook for each record its sink made durable, before the 200 is sent. The rate
        is applied here, with the source and count the app knows: a request past it costs a lock
        and some arithmetic (a parse and two turns of the event loop before, which the batch-1
        benchmark showed). What is kept is inspected after the answer, in steps: a batch of 2,500
        events is not checked in one go."""
        try:
            kept = self.store.admit(source, events)
            if kept:
                self.loop.call_soon(self._step, self.inspector.steps(record, admitted=(source, events, kept)))
        except Exception:  # noqa: BLE001 - the debugger must never cost an event; logged
            _LOG.warning("debugger: an accepted record could not be inspected", exc_info=True)

    def _step(self, work) -> None:
        try:
            next(work)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - the debugger must never cost an event; logged
            _LOG.warning("debugger: an accepted record could not be inspected", exc_info=True)
            return
        self.loop.call_soon(self._step, work)

    # -- what it refused ---------------------------------------------------------------------
    def watch(self, scope, headers: dict, receive, send) -> tuple:
        """(receive, send) for a POST: as given when its path is no event path, else wrappers
        keeping references to the body's first PREVIEW_RAW_BYTES and noting an error answer."""
        if route(scope["path"]) is None:
            return receive, send
        chunks, state = [], [0, False, None]   # bytes seen, body complete, error status

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if state[0] < PREVIEW_RAW_BYTES and chunk:
                    chunks.append(chunk)
                state[0] += len(chunk)
                state[1] = not message.get("more_body", False)
            return message

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400 and status not in _NOT_EVENTS:
                    state[2] = status
            elif state[2] is not None and message["type"] == "http.response.body":
                status, state[2] = state[2], None
                try:
                    self._refused(scope, headers, status, message.get("body", b""), chunks, state[1], state[0])
                except Exception:  # noqa: BLE001 - never in the way of the answer; logged
                    _LOG.warning("debugger: a refused request could not be recorded", exc_info=True)
            await send(message)

        return watched_receive, watched_send

    def _refused(self, scope, headers: dict, status: int, answer: bytes, chunks: list, complete: bool,
                 size: int) -> None:
        """complete: the body was read to its end; size: its bytes (chunks hold at least the first
        PREVIEW_RAW_BYTES of them)."""
        try:
            said = orjson.loads(answer) if answer else {}
        except orjson.JSONDecodeError:
            said = {}
        code = said.get("code") if isinstance(said, dict) else None
        message = said.get("message") if isinstance(said, dict) else None
        body = b"".join(chunks)[:PREVIEW_RAW_BYTES]
        # the keys the request named outside its body, removed from the preview too wherever
        # the body repeats them (a key pasted into a property, or in a body the app could not read)
        read = [k for k in (_basic_key(headers), *_query_keys(scope)) if k]
        text, key = preview(body, headers.get("content-encoding"), complete and size <= PREVIEW_RAW_BYTES, read)
        source = self._source_of(scope, headers, key)
        self.inspector.refused(received_at(datetime.now(timezone.utc)), status, code or f"http_{status}",
                               message or "", source, scope["path"], text, _request_bytes(headers, size))

    def _source_of(self, scope, headers: dict, body_key) -> Optional[str]:
        """The source a refused request's write key names (a known key, refused for its origin,
        rate or a disabled source), or None: the key read as the app reads it
        (collector.requests.key_before_body), else the body's. The key itself is never kept."""
        try:
            key = key_before_body(scope["path"], scope.get("query_string", b"").decode("latin-1"), headers)
        except Refusal:
            key = None
        key = key or body_key
        if not key:
            return None
        return next((s.name for s in self.collector.sources if s.write_key == key), None)


def _request_bytes(headers: dict, read: int) -> int:
    """A refused body's size as sent: its Content-Length (a request refused before its body was
    read, 413 by its length or 401 by its key, was read in part or not at all), else what was read."""
    length = headers.get("content-length", "")
    return max(read, int(length)) if length.isascii() and length.isdecimal() and len(length) < 19 else read


def _basic_key(headers: dict) -> Optional[str]:
    authorization = headers.get("authorization")
    try:
        return basic_user(authorization) if authorization else None
    except Refusal:
        return None


def _query_keys(scope) -> list:
    query = scope.get("query_string")
    return parse_qs(query.decode("latin-1")).get("writeKey", []) if query else []


class DebuggerMetrics:
    """The debugger's counts on the collector's /metrics, read at each scrape: what it keeps,
    what it skipped at a high rate, and the time its checks took."""

    def __init__(self, debugger: Debugger):
        self._debugger = debugger

    def describe(self):
        return []   # read at collect time only (the registry must not collect while registering)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        stats = self._debugger.store.stats()
        received = CounterMetricFamily("sluice_debugger_events_received", "Events the debugger saw, per source",
                                       labels=["source"])
        skipped = CounterMetricFamily("sluice_debugger_events_skipped", "Events past the debugger's rate, counted "
                                      "but not kept or checked, per source", labels=["source"])
        entries = GaugeMetricFamily("sluice_debugger_entries", "Entries the debugger holds, per source",
                                    labels=["source"])
        for name, counts in sorted(stats["sources"].items()):
            received.add_metric([name], counts["received"])
            skipped.add_metric([name], counts["skipped"])
            entries.add_metric([name], counts["entries"])
        yield received
        yield skipped
        yield entries
        yield GaugeMetricFamily("sluice_debugger_payload_bytes", "Bytes of the payloads the debugger holds",
                                stats["payload_bytes"])
        inspector = self._debugger.inspector
        yield CounterMetricFamily("sluice_debugger_inspect_seconds", "Time spent checking events (decode, "
                                  "normalize, contracts)", inspector.seconds)
        yield CounterMetricFamily("sluice_debugger_events_inspected", "Events checked", inspector.inspected)
        polled = self._debugger.warehouse_fates
        if polled is not None:
            yield CounterMetricFamily("sluice_debugger_fate_lookups", "Polls of the warehouse that looked pending "
                                      "entries up", polled.lookups)
            yield CounterMetricFamily("sluice_debugger_fate_lookup_failures", "Polls of the warehouse that failed "
                                      "(logged; the entries stay pending)", polled.failures)
            yield CounterMetricFamily("sluice_debugger_fate_lookup_bytes", "Bytes the warehouse's lookup queries "
                                      "processed (what BigQuery bills on demand)", polled.bytes_processed)
            yield CounterMetricFamily("sluice_debugger_fates_settled", "Entries whose fate a warehouse lookup "
                                      "found", polled.settled)

