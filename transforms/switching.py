"""How often Python hands the GIL between threads, while a warehouse commits beside the bundle.

A batch run's committer thread (transforms.warehouse.sink.WriteEventsFn) needs the GIL only
briefly, each time DuckDB opens or advances an Arrow scan, while the bundle's thread runs
Python without pause. With Python's default interval (5 ms) the committer waits up to 5 ms each
time: measured, its commits took 53 us an event instead of 19. A 0.1 ms interval lets it in
soon; with two threads the extra hand-overs cost the bundle's thread nothing measurable.
Process-wide, so counted: the interval comes back when the last user is done.
"""
import sys
import threading

INTERVAL = 0.0001  # seconds

_lock = threading.Lock()
_users = 0
_saved = None


def shorten() -> None:
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(INTERVAL)
        _users += 1


def restore() -> None:
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            sys.setswitchinterval(_saved)
