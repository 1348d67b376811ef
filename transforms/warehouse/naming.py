"""Warehouse identifiers: table and column names in Segment's style, valid on every backend.

Rules: camelCase to snake_case; accents folded (é -> e); anything outside [a-z0-9_] to
`_`; runs of `_` collapsed; a leading digit or an SQL reserved word gets a `_` prefix; a
name longer than the limit is cut and suffixed with a hash of the whole source so two long
names never meet. Names here are only proposals: the table schema (planner.TableSchema)
resolves collisions between different sources that propose the same name.
"""
import hashlib
import re
import unicodedata
from functools import lru_cache

MAX_NAME_LENGTH = 128  # the same on every backend, so tables look alike everywhere

# Segment's fixed tables; an event table that would take one of these names gets a `_` prefix.
FIXED_TABLES = frozenset(("tracks", "identifies", "users", "pages", "screens", "groups", "aliases"))

# BigQuery's reserved keywords plus DuckDB's, lower-cased: a column or table named so
# would need quoting in every query a user writes.
RESERVED_WORDS = frozenset("""
all and any array as asc assert_rows_modified at between by case cast collate contains create
cross cube current default define desc distinct else end enum escape except exclude exists extract
false fetch following for from full group grouping groups hash having if ignore in inner intersect
interval into is join lateral left like limit lookup merge natural new no not null nulls of on or
order outer over partition preceding proto qualify range recursive respect right rollup rows select
set some struct tablesample then to treat true unbounded union unnest using when where window with
within analyse analyze asymmetric both check column constraint deferrable do fetch foreign grant
initially leading offset only placing primary references returning symmetric table trailing
unique variadic pivot unpivot semi anti positional
""".split())

_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")   # HTTPServer -> HTTP_Server
_CAMEL = re.compile(r"([a-z])([A-Z])|([0-9])([A-Z][a-z])")  # userId -> user_Id, sha256Hash -> sha256_Hash
_INVALID = re.compile(r"[^a-z0-9_]+")
_UNDERSCORES = re.compile(r"_{2,}")
_HAS_ALNUM = re.compile(r"[a-z0-9]")


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


@lru_cache(maxsize=1 << 16)
def snake_case(key: str) -> str:
    """One key to snake_case ASCII; may be empty or all underscores (callers handle that)."""
    folded = unicodedata.normalize("NFKD", key)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = _CAMEL.sub(lambda m: "_".join(filter(None, m.groups())), _ACRONYM.sub(r"\1_\2", folded)).lower()
    return _UNDERSCORES.sub("_", _INVALID.sub("_", folded))


def _finish(name: str, source: str, fallback_prefix: str, max_length: int) -> str:
    if not _HAS_ALNUM.search(name):
        name = f"{fallback_prefix}_{short_hash(source)}"
    if name[0].isdigit() or name in RESERVED_WORDS:
        name = "_" + name
    if len(name) > max_length:
        name = name[: max_length - 9].rstrip("_") + "_" + short_hash(source)
    return name


@lru_cache(maxsize=1 << 16)
def column_name(segments: tuple, max_length: int = MAX_NAME_LENGTH) -> str:
    """Proposed column for a path of keys: ("context", "page", "url") -> "context_page_url"."""
    joined = _UNDERSCORES.sub("_", "_".join(snake_case(s) for s in segments))
    return _finish(joined, "\x00".join(segments), "col", max_length)


def suffixed(name: str, source: str, max_length: int = MAX_NAME_LENGTH, length: int = 6) -> str:
    """A distinct name for a second source that proposed an already-taken name."""
    suffix = "_" + short_hash(source, length)
    return name[: max_length - len(suffix)] + suffix


@lru_cache(maxsize=1 << 14)
def table_name(event: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Table for a track event: "Order Completed" -> "order_completed"; "Users" -> "_users"."""
    name = _finish(snake_case(event).strip("_"), event, "event", max_length)
    if name in FIXED_TABLES:
        name = "_" + name
    return name
