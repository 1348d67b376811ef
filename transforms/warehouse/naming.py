"""Warehouse identifiers: table and column names as Segment's warehouses make them.

Segment's loaders snake-case every event and property name with segmentio/go-snakecase;
snake_case() below gives the same result on every input (docs/column-names.md has the rules
and the reference's test cases are tests/unit/test_naming.py). In short: ASCII letters and
digits make words, everything else (punctuation, spaces, `_`, any non-ASCII character)
separates them; leading and trailing separators are dropped and runs of them become one `_`;
a word is capitals and digits, then lower-case letters and digits (`sampleText` ->
`sample_text`, `CStringRef` -> `cstring_ref`, `Base64Encode` -> `base64_encode`, `2FA` -> `2fa`).

Sluice adds what a valid, unquoted identifier on every backend needs: a name with no letter
or digit gets a fallback (`col_<hash>`, `event_<hash>`); a leading digit or an SQL reserved
word gets a `_` prefix; a name longer than the limit is cut and suffixed with a hash of the
whole source, so two long names never meet; an event table that would take one of Segment's
fixed table names (or one of Sluice's experiment tables) gets a `_` prefix. Names here are only
proposals: the table schema (planner.TableSchema) maps columns by source path and resolves
collisions between different sources that propose the same name.
"""
import hashlib
import re
from functools import lru_cache

MAX_NAME_LENGTH = 128  # the same on every backend, so tables look alike everywhere

# Segment's fixed tables, and Sluice's experiment tables (the pipeline's exposures, the analysis's
# results: docs/experiments.md); an event table that would take one of these names gets a `_` prefix.
FIXED_TABLES = frozenset(("tracks", "identifies", "users", "pages", "screens", "groups", "aliases",
                          "experiment_exposures", "experiment_results"))

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

# go-snakecase's rules on ASCII classes; [a-z] in a str pattern is ASCII only, unlike \w or \d.
# The leading run kept as it is: lower-case letters and digits, `_` only between two of them.
_UNCHANGED = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
# A word: upper-case letters and digits, then lower-case letters and digits.
_WORD = re.compile(r"[A-Z0-9]+[a-z0-9]*|[a-z0-9]+")
_DIGITS = frozenset("0123456789")


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


@lru_cache(maxsize=1 << 16)
def snake_case(key: str) -> str:
    """One key to snake_case exactly as go-snakecase's Snakecase; may be empty (callers handle that).

    The result only has [a-z0-9_], never starts or ends with `_` and never repeats it.
    """
    unchanged = _UNCHANGED.match(key)
    end = unchanged.end() if unchanged else 0
    if end == len(key):
        return key
    words = [key[:end]] if end else []
    # An upper-case run right after a leading run whose last `_`-separated part is all
    # digits stays in that word: "5TEst" -> "5test", "edf_6N" -> "edf_6n" (but "lk0B" -> "lk0_b").
    if end and "A" <= key[end] <= "Z" and _DIGITS.issuperset(words[0][words[0].rfind("_") + 1:]):
        word = _WORD.match(key, end)
        words[0] += word.group().lower()
        end = word.end()
    words.extend(_WORD.findall(key, end))
    return "_".join(words).lower()


def _finish(name: str, source: str, fallback_prefix: str, max_length: int) -> str:
    if not name:  # no ASCII letter or digit anywhere in the source
        name = f"{fallback_prefix}_{short_hash(source)}"
    if name[0].isdigit() or name in RESERVED_WORDS:
        name = "_" + name
    if len(name) > max_length:
        name = name[: max_length - 9].rstrip("_") + "_" + short_hash(source)
    return name


@lru_cache(maxsize=1 << 16)
def column_name(segments: tuple, max_length: int = MAX_NAME_LENGTH) -> str:
    """Proposed column for a path of keys: ("context", "page", "url") -> "context_page_url".

    Each key is snake-cased and the non-empty results joined with `_`, which is the same as
    snake-casing the keys joined with `_` (Segment flattens `context.page.url` so).
    """
    joined = "_".join(filter(None, map(snake_case, segments)))
    return _finish(joined, "\x00".join(segments), "col", max_length)


def suffixed(name: str, source: str, max_length: int = MAX_NAME_LENGTH, length: int = 6) -> str:
    """A distinct name for a second source that proposed an already-taken name."""
    suffix = "_" + short_hash(source, length)
    return name[: max_length - len(suffix)] + suffix


@lru_cache(maxsize=1 << 14)
def table_name(event: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Table for a track event: "Order Completed" -> "order_completed"; "Users" -> "_users"."""
    name = _finish(snake_case(event), event, "event", max_length)
    if name in FIXED_TABLES:
        name = "_" + name
    return name
