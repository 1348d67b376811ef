"""Pause Python's cyclic garbage collector around bulk work that allocates no cycles.

Planning a warehouse batch allocates a few hundred thousand short-lived dicts and lists,
all freed by reference counting. Each allocation burst triggers collections that walk
the whole live heap, which holds the buffered batch itself: measured at about 20 us per
event, a third of the warehouse stage. Pausing the collector for the duration of a batch
removes that cost; the collector resumes afterwards and finds nothing left to do.

gc.disable() is process-wide and bundles may run on several threads, so pauses are
counted: the collector comes back when the last pause ends, and only if it was on.
"""
import gc
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused():
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


# Allocations between two collections of the youngest generation while relaxed() (Python's own: 700),
# net of the deallocations. Above what a batch run keeps alive at once (a backfill batch of
# 20,000 realistic events and the one committing: ~520,000 containers at the peak), so that
# no collection walks the buffered batches, which all die by reference counting; cyclic garbage
# (the run makes almost none) still triggers one, bounded by this count. The threshold is the
# process's: in `serve`'s embedded loads, the collector's threads' young garbage waits too for a
# load's length, and a collection that comes walks up to this many objects (~0.1 s).
RELAXED_THRESHOLD = 1_000_000


@contextmanager
def relaxed():
    """For a local batch run (the launcher's process is the worker): what is alive now (modules,
    the graph) is frozen, never walked again by a collection, and the youngest generation is
    collected every RELAXED_THRESHOLD allocations instead of 700. The run makes millions of
    short-lived dicts freed by reference counting; each collection walks whatever young objects
    are alive, the batch being buffered above all, so a threshold above that leaves almost no
    collection to make (docs/benchmarks.md: 5-8 us an event at 700, 4-6 more at 50,000). Cycles
    are still collected, later."""
    thresholds = gc.get_threshold()
    # A heap frozen already (the collector's, settled at start: collector.server) stays as its
    # owner froze it: unfreeze() would release every frozen object, not only ours.
    freezing = gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    gc.set_threshold(RELAXED_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freezing:
            gc.unfreeze()
