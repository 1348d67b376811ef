"""Forwarding in streaming jobs on runners whose processing-time timers fire (Dataflow).

One stateful DoFn per (destination, shard) key batches and delivers:
- a batch is cut when it has max_events, when the next payload would take the request body past
  max_bytes, or when its first delivery has waited max_wait_seconds (a timer);
- a cut batch gets one attempt at once. A transient failure (408, 429, 5xx, no answer) does not
  sleep: the batch goes into the key's state with its attempt count and the time of its next
  attempt (exponential backoff with full jitter, or the receiver's Retry-After), and a timer
  brings it back then. The DoFn's thread is held for one request at a time, never for a
  backoff, so a destination that is down costs the others nothing;
- a batch delivered, refused for good, out of attempts or past max_age_seconds is settled:
  counted, its `_deliveries` row emitted (the main output; the time of its first request and
  the summed time of its requests are kept in state with it meanwhile), and when it failed,
  one dead letter per event;
- at the end of the window (a drain) the open batch is sent and every waiting batch gets one
  last attempt; what still fails is dead-lettered, so nothing stays behind in state.

Every buffer in state has an explicit coder (transforms.destinations.deliveries), so a new
version can take over a running job's state with --update.
"""
import random
import time

import apache_beam as beam
from apache_beam.coders import FloatCoder, TupleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.destinations.deliveries import (DeliveryCoder, Pending, PendingCoder, batch_key, count_attempts,
                                                settle)
from transforms.destinations.delivery import attempt, final, next_wait
from transforms.destinations.lanes import Limits
from transforms.destinations.senders import open_sender


class BatchAndRetryFn(beam.DoFn):
    BUFFER = BagStateSpec("buffer", DeliveryCoder())                                     # the open batch
    HELD = ReadModifyWriteStateSpec("held", TupleCoder((VarIntCoder(), VarIntCoder())))  # its (events, bytes)
    PENDING = BagStateSpec("pending", PendingCoder())                                    # batches awaiting a retry
    RETRY_AT = ReadModifyWriteStateSpec("retry_at", FloatCoder())                        # when the RETRY timer fires
    WAITED = TimerSpec("waited", TimeDomain.REAL_TIME)
    RETRY = TimerSpec("retry", TimeDomain.REAL_TIME)
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, destinations: tuple, clock=time.time, rand=random.random):
        """clock: processing time in seconds (tests pass TestStream's)."""
        self._destinations, self._clock, self._rand = destinations, clock, rand
        self._limits = Limits(destinations)
        self._by_name, self._senders = None, None

    def setup(self):
        self._by_name = {d.name: d for d in self._destinations}
        self._senders = {d.name: open_sender(d) for d in self._destinations}

    def teardown(self):
        for sender in (self._senders or {}).values():
            sender.close()
        self._senders = None

    def process(self, element, w=beam.DoFn.WindowParam, buffer=beam.DoFn.StateParam(BUFFER),
                held=beam.DoFn.StateParam(HELD), pending=beam.DoFn.StateParam(PENDING),
                retry_at=beam.DoFn.StateParam(RETRY_AT), waited=beam.DoFn.TimerParam(WAITED),
                retry=beam.DoFn.TimerParam(RETRY), end=beam.DoFn.TimerParam(END)):
        (name, _), item = element
        count, size = held.read() or (0, 0)
        if self._limits.full_after(name, count, size, item):
            yield from self._send(name, _take(buffer, held), pending, retry_at, retry)
            count, size = 0, 0
        if count == 0:
            end.set(w.max_timestamp())
            waited.set(self._clock() + self._by_name[name].batch.max_wait_seconds)
        buffer.add(item)
        held.write((count + 1, size + len(item.payload) + 1))

    @on_timer(WAITED)
    def on_waited(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER),
                  held=beam.DoFn.StateParam(HELD), pending=beam.DoFn.StateParam(PENDING),
                  retry_at=beam.DoFn.StateParam(RETRY_AT), retry=beam.DoFn.TimerParam(RETRY)):
        yield from self._send(key[0], _take(buffer, held), pending, retry_at, retry)

    @on_timer(RETRY)
    def on_retry(self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING),
                 retry_at=beam.DoFn.StateParam(RETRY_AT), retry=beam.DoFn.TimerParam(RETRY)):
        due_by = retry_at.read()
        waiting = list(pending.read())
        pending.clear(), retry_at.clear()
        for entry in waiting:
            if due_by is None or entry.next_at <= due_by:
                yield from self._attempt(key[0], entry, pending, retry_at, retry)
            else:
                _pend(entry, pending, retry_at, retry)

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER),
               held=beam.DoFn.StateParam(HELD), pending=beam.DoFn.StateParam(PENDING),
               retry_at=beam.DoFn.StateParam(RETRY_AT), retry=beam.DoFn.TimerParam(RETRY)):
        """The window is over (a drain): nothing may stay in state, so the last chance is now."""
        name = key[0]
        waiting = list(pending.read())
        pending.clear(), retry_at.clear()
        batch = _take(buffer, held)
        if batch:
            waiting.append(Pending(0, min(d.ready_at for d in batch), self._clock(), batch))
        for entry in waiting:
            yield from self._attempt(name, entry, pending, retry_at, retry, last_chance=True)

    def _send(self, name: str, batch: list, pending, retry_at, retry):
        if not batch:
            return []
        return self._attempt(name, Pending(0, min(d.ready_at for d in batch), self._clock(), batch),
                             pending, retry_at, retry)

    def _attempt(self, name: str, entry: Pending, pending, retry_at, retry, last_chance: bool = False) -> list:
        """One request for a batch: settled (its outputs returned), or back in state for later."""
        policy = self._by_name[name].retry
        requested_at = entry.requested_at if entry.requested_at is not None else self._clock()
        began = time.monotonic()
        outcome = attempt(self._senders[name].attempt([d.payload for d in entry.deliveries],
                                                      batch_key(entry.deliveries)))
        took = time.monotonic() - began
        attempts, now = entry.attempts + 1, self._clock()
        wait = None if last_chance else next_wait(outcome, attempts, policy, now - entry.born, self._rand)
        count_attempts(name, (took,), retried=0 if wait is None else 1)
        entry = entry._replace(attempts=attempts, requested_at=requested_at, latency=entry.latency + took)
        if wait is not None:
            _pend(entry._replace(next_at=now + wait), pending, retry_at, retry)
            return []
        last = outcome if last_chance else final(outcome, attempts, policy)
        if last_chance and not last.ok and last.transient:
            last = last._replace(detail=f"{last.detail}; gave up: the window ended (the job was drained)")
        return settle(name, entry.deliveries, last, attempts, entry.requested_at, entry.latency)


def _take(buffer, held) -> list:
    batch = list(buffer.read())
    buffer.clear(), held.clear()
    return batch


def _pend(entry: Pending, pending, retry_at, retry) -> None:
    """Keep a batch for a later attempt; the timer fires for the earliest one waiting."""
    pending.add(entry)
    current = retry_at.read()
    if current is None or entry.next_at < current:
        retry_at.write(entry.next_at)
        retry.set(entry.next_at)
