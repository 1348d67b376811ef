"""ISO-8601 times as Sluice stores them: parsed strictly, written in one canonical UTC form."""
import time
from datetime import datetime, timezone


def parse_time(value) -> datetime:
    """ISO-8601 string to an aware UTC datetime; naive times are taken as UTC. Fractions finer
    than a microsecond are cut (what every warehouse's timestamp holds). ValueError for anything
    else, a time outside years 1-9999 once in UTC included."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        raise ValueError(f"{value[:40]} is outside years 1-9999 in UTC") from None


def format_time(value: datetime) -> str:
    """Canonical form, e.g. 2026-11-02T09:00:01.350000Z (every backend parses it)."""
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (value.year, value.month, value.day, value.hour,
                                                      value.minute, value.second, value.microsecond)


def is_canonical_utc(value: str) -> bool:
    """Already in a UTC form every backend parses as is (seconds, ms or µs, then Z)?
    Callers have validated it with parse_time."""
    return len(value) in (20, 24, 27) and value[-1] == "Z" and value[10] == "T"


_clock = [-1, ""]


def now_iso() -> str:
    """The current time, canonical, at millisecond resolution (cached: called per message)."""
    millis = int(time.time() * 1000)
    if millis != _clock[0]:
        _clock[0], _clock[1] = millis, format_time(datetime.fromtimestamp(millis / 1000, timezone.utc))
    return _clock[1]
