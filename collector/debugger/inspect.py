"""Entries from what the collector accepted or refused, each event checked as the pipeline will.

An accepted record (the line the sink keeps) is read by the pipeline's own pure functions, in
the pipeline's order and with the same config: `decode_message` (batch split, envelope defaults
merged, the decode limits), `normalize_event` (the spec's required fields and times), then
`ContractEnforcer.check` (the function ValidateContracts calls per event, with the same
contracts and policies). No Beam runs. So an entry's contract result is the pipeline's verdict:
planned or not, each violation with its pointer, keyword, message and the action its policy
takes (`kept`, `omitted`, `blocked`).

Decode and normalize are deterministic and nothing before them can change an event, so an
event they refuse is shown dead-lettered at once (error_type and message as its dead letter
will have them); every other fate waits for the warehouse (collector.debugger.fates).

Cost (docs/debugger.md): only the events the store admits are inspected; see `Inspector.cost`.
"""
import re
import time
from typing import Optional

import orjson

from collector.debugger.preview import PREVIEW_CHARS
from collector.debugger.store import MAX_VIOLATIONS, UNKNOWN_SOURCE, Entry, Store
from transforms import jsonutil, timeutil
from transforms.contracts.enforce import ContractEnforcer
from transforms.contracts.model import ContractSettings
from transforms.decode import DecodeLimits, Refused, decode_message
from transforms.messages import Event, RawMessage, Rejection
from transforms.normalize import derive_message_id, normalize_event

STEP_EVENTS = 32               # events inspected between two turns of the event loop (a few ms at most)


class Inspector:
    def __init__(self, store: Store, contracts: Optional[ContractSettings] = None,
                 limits: DecodeLimits = DecodeLimits()):
        self.store, self.limits = store, limits
        self.enforcer = ContractEnforcer(contracts or ContractSettings(""))
        self.seconds, self.inspected = 0.0, 0   # time spent inspecting admitted events, and how many

    def cost(self) -> Optional[float]:
        """Microseconds an inspected event has cost on average, so far."""
        return self.seconds / self.inspected * 1e6 if self.inspected else None

    # -- accepted ----------------------------------------------------------------------------
    def accepted(self, record: bytes) -> int:
        """Entries for the events of one accepted record (as many as the store admits)."""
        kept = 0
        for kept in self.steps(record, every=0):
            pass
        return kept

    def steps(self, record: bytes, every: int = STEP_EVENTS, admitted: Optional[tuple] = None):
        """accepted(), pausing after every `every` events inspected (0: never), so the collector's
        event loop answers requests between the steps of a large batch; yields how many events
        of the record have been inspected so far, last the number kept. `admitted`: (source,
        events, kept) when the store's rate was applied already (the app's hook, which knows them)."""
        started = time.perf_counter()
        head = None
        if admitted is None:
            peeked = _peek(record)
            kept = self.store.admit(*peeked[:2]) if peeked else None
            if kept == 0:   # past the rate: counted, not decoded (decode's depth check costs more than a parse)
                yield 0
                return
            source, events, head = peeked or (None, None, None)
        else:
            source, events, kept = admitted
        if kept is not None and kept < events:
            # only the events kept are decoded: at a high rate a request of 100 often gets 1 or 2,
            # and decoding all 100 for them took 1.6 ms, 8 times the parse that told the count
            head = head if head is not None else _parse(record)
            if head is not None:
                record = orjson.dumps({**head, "batch": head["batch"][:kept]})
        head = None   # the parsed record is not held while the steps run
        outcomes = [o for o in decode_message(RawMessage(record, {}, "collector"), None, self.limits)
                    if isinstance(o, (Event, Refused))]
        if not outcomes:
            yield 0
            return
        if kept is None:
            source = outcomes[0].source if isinstance(outcomes[0], Event) else outcomes[0].source or UNKNOWN_SOURCE
            kept = self.store.admit(source, len(outcomes))
        # else the source the record names (or the app named)
        received_at = _received_at(record, outcomes)
        for done, outcome in enumerate(outcomes[:kept], 1):
            if isinstance(outcome, Refused):
                self.store.add(self._refused_member(outcome, source, received_at))
            else:
                self.store.add(self.event(outcome, received_at))
            if every and done % every == 0 and done < kept:
                self.seconds += time.perf_counter() - started
                yield done
                started = time.perf_counter()
        self.seconds += time.perf_counter() - started
        self.inspected += kept
        yield kept

    def event(self, event: Event, received_at: str) -> Entry:
        body = event.body
        payload, size, truncated = self._payload(body)
        normalized = normalize_event(body, received_at, True, event.original)
        if isinstance(normalized, Rejection):
            kind = body.get("type")
            return Entry(received_at, event.source, payload, size, type=kind if isinstance(kind, str) else None,
                         event=_text(body.get("event")), user_id=_text(body.get("userId")),
                         anonymous_id=_text(body.get("anonymousId")),
                         message_id=_text(body.get("messageId")) or derive_message_id(event.original),
                         truncated=truncated, contract=None, fate=_dead_letter(normalized))
        return Entry(received_at, event.source, payload, size, type=normalized["type"],
                     event=normalized.get("event"), user_id=normalized.get("userId"),
                     anonymous_id=normalized.get("anonymousId"), message_id=normalized["messageId"],
                     truncated=truncated, contract=self.contract(normalized), timestamp=normalized.get("timestamp"))

    def contract(self, body: dict) -> dict:
        """The contract result of a normalized event: ContractEnforcer.check's verdict as JSON.
        `result`: unchecked (no contracts configured), passed, allowed (violations kept or an
        unplanned event allowed), omitted (values removed, the rest stored), blocked (a dead letter)."""
        enforcer = self.enforcer
        if not enforcer.enabled:
            return {"planned": None, "violations": [], "result": "unchecked"}
        verdict = enforcer.check(body)
        violations = list(verdict.violations or ())
        if verdict.rejection is not None:
            result = "blocked"
        elif any(v["action"] == "omitted" for v in violations):
            result = "omitted"
        elif violations or verdict.unplanned:
            result = "allowed"
        else:
            result = "passed"
        answer = {"planned": not verdict.unplanned, "violations": violations[:MAX_VIOLATIONS], "result": result}
        if verdict.unplanned:
            answer["unplanned_policy"] = enforcer.unplanned_policy
        if len(violations) > MAX_VIOLATIONS:
            answer["violations_not_shown"] = len(violations) - MAX_VIOLATIONS
        if verdict.rejection is not None:
            answer["error_type"] = verdict.rejection.error_type
        return answer

    def _payload(self, value) -> tuple:
        """(kept payload, its full size, cut?): JSON bytes, or a str preview past max_payload_bytes."""
        data = jsonutil.dumps(value)
        cap = self.store.settings.max_payload_bytes
        if len(data) <= cap:
            # a copy of its exact size: orjson's bytes keep the buffer they were written in (16 KiB
            # or more even for a 1 KB event), which 500 entries a source would hold on to
            return memoryview(data).tobytes(), len(data), False
        return data[:cap].decode("utf-8", "ignore") + "…", len(data), True

    def _refused_member(self, refused: Refused, source: str, received_at: str) -> Entry:
        payload, size, truncated = self._payload(refused.payload.decode("utf-8", "replace"))
        return Entry(received_at, source, payload, size, truncated=truncated, fate=_dead_letter(refused.rejection))

    # -- refused -----------------------------------------------------------------------------
    def refused(self, received_at: str, status: int, code: str, message: str, source: Optional[str],
                path: str, preview_text: Optional[str], size: Optional[int] = None) -> Optional[Entry]:
        """An entry for a request the collector answered with an error (nothing was kept); size:
        the request body's bytes as sent (else the preview's length)."""
        source = source or UNKNOWN_SOURCE
        if not self.store.admit(source, 1):
            return None
        if preview_text is not None and len(preview_text) > PREVIEW_CHARS + 1:
            preview_text = preview_text[:PREVIEW_CHARS] + "…"
        fate = {**_dead_letter(None), "status": "refused", "error_type": code, "error_message": message}
        size = len(preview_text or "") if size is None else size
        return self.store.add(Entry(received_at, source, preview_text, size, status,
                                    reason={"code": code, "message": message, "path": path[:200]},
                                    fate=fate))


def _dead_letter(rejection: Optional[Rejection]) -> dict:
    return {"status": "dead_lettered", "table": None, "error_type": rejection and rejection.error_type,
            "error_message": rejection and rejection.message, "policy": None, "destinations": {}}


def _text(value) -> Optional[str]:
    return value if isinstance(value, str) else None


def _parse(record: bytes) -> Optional[dict]:
    """A record as the collector writes it (a batch envelope), parsed; None for anything else."""
    try:
        head = orjson.loads(record)
    except orjson.JSONDecodeError:   # integers past 64 bits, which jsonutil reads
        return None
    return head if type(head) is dict and type(head.get("batch")) is list else None


def _peek(record: bytes):
    """(source, events, the record parsed) of a record as the collector writes it (a batch
    envelope naming its source), or None for anything else (decoded in full to be counted)."""
    head = _parse(record)
    batch = head.get("batch") if head is not None else None
    source = head.get("source") if type(batch) is list else None
    return (source, len(batch), head) if type(source) is str and source else None


def _received_at(record: bytes, outcomes: list) -> str:
    for outcome in outcomes:
        if isinstance(outcome, Event):
            stamp = outcome.body.get("receivedAt")
            if isinstance(stamp, str):
                return stamp
    found = re.search(rb'"receivedAt":"([^"]{1,40})"', record[-200:])
    return found.group(1).decode() if found else timeutil.now_iso()
