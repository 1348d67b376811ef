"""What a refused request's body may show: a bounded preview without its write key.

Beam-free (the collector's `serve --sink` imports no pipeline stage), like the rest of what the
debugger needs before it is on: settings, store, api, service.
"""
import re
import zlib
from typing import Optional
from urllib.parse import quote, quote_plus

import orjson

from transforms import jsonutil

PREVIEW_CHARS = 1024           # of a refused request's body, the write key removed
PREVIEW_RAW_BYTES = 8 * 1024   # read of a refused body to make that preview (gzip: inflated up to this)
# A write key's name however a body spells it: any case, `write_key` / `write-key` / `write key`,
# each letter possibly a JSON \u escape (a JSON parser reads "write\u004bey" as writeKey), its
# quotes escaped any number of times (a JSON string holding JSON), then `:` or `=` (a JS object
# literal, a form body, their URL-encoded forms). The value after it is cut out, whatever it is.
_NAME = "".join(r"(?:%s|%s|\\+u00(?:%02x|%02X)|\\+u00(?:%02x|%02X))" % (c, c.upper(), ord(c), ord(c), ord(c.upper()),
                                                                    ord(c.upper())) if c.isalpha() else c
                for c in "write") + r"(?:[\s_\-]|%5[fF]|%2[dD])?" + "".join(
    r"(?:%s|%s|\\+u00(?:%02x|%02X)|\\+u00(?:%02x|%02X))" % (c, c.upper(), ord(c), ord(c), ord(c.upper()),
                                                        ord(c.upper())) for c in "key")
_WRITE_KEY = re.compile(r"(" + _NAME + r"""(?:\\*["'`]|%22|%27)?\s*(?:[:=]|%3[aAdD])\s*)(\\*["'`]|%22|%27)?""")
_UNQUOTED_END = re.compile(r"[,;&}\]\s)]")
REMOVED = "(removed)"


def _cut_keys(text: str, found: set) -> str:
    """`text` with the value after every write key's name replaced; the values cut go in `found`."""
    out, at = [], 0
    for match in _WRITE_KEY.finditer(text):
        if match.start() < at:   # inside a value already cut
            continue
        value_start = match.end()
        quote = match.group(2)
        if quote:   # up to the same (escaped) quote again, or the end of what was read
            end = _closing(text, quote, value_start)
            value_end = len(text) if end < 0 else end
            resume = len(text) if end < 0 else end + len(quote)
        else:
            end = _UNQUOTED_END.search(text, value_start)
            value_end = resume = len(text) if end is None else end.start()
        if value_end > value_start:
            found.add(text[value_start:value_end])
        out.append(text[at:match.start(1)] + match.group(1) + (quote or "") + REMOVED + (quote or ""))
        at = resume
    out.append(text[at:])
    return "".join(out)


def _closing(text: str, quote: str, start: int) -> int:
    """Where the string opened by `quote` ends (-1: not in `text`): a quote after an odd number
    of backslashes of its own (`\\"` inside `"..."`) is part of the value."""
    end = text.find(quote, start)
    while end >= 0:
        before = end
        while before > start and text[before - 1] == "\\":
            before -= 1
        if (end - before) % 2 == 0:
            return end
        end = text.find(quote, end + 1)
    return end


def _forms(key: str) -> set:
    """How a key may appear in a body: as is, inside a JSON string (once or twice), URL-encoded."""
    escaped = orjson.dumps(key).decode()[1:-1]
    return {key, escaped, orjson.dumps(escaped).decode()[1:-1], quote(key, safe=""), quote_plus(key, safe="")}


def scrub(text: str, keys) -> str:
    """`text` with every write key removed: the values of whatever names one (_WRITE_KEY), and
    every occurrence of `keys` (those the collector read: Basic user, ?writeKey=, the body's),
    in each form a body may hold them."""
    found = set()
    text = _cut_keys(text, found)
    forms = set()
    for key in set(keys) | found:
        if isinstance(key, str) and key and key != REMOVED:
            forms |= _forms(key)
    for form in sorted(forms, key=len, reverse=True):   # longest first: a form inside another is not left half
        if form:
            text = text.replace(form, REMOVED)
    return text


def preview(body: bytes, content_encoding: Optional[str], complete: bool, keys=()) -> tuple:
    """(text, write key): at most PREVIEW_CHARS of a refused request's body as text, never its
    write key, and the body's write key, for the caller to find the source (never kept).
    The key goes three ways: a whole JSON object is parsed and written again without
    `writeKey`; the value after anything naming a write key is cut (_WRITE_KEY: a JSON string
    holding JSON, a form body, a JS object literal, escaped names); and every occurrence of the
    keys read (the body's, and `keys`: what the request's Basic user and ?writeKey= said) is
    replaced, so a key under another name, or bare, is gone too. `complete`: `body` is the
    whole body (not only its first bytes)."""
    if not body:
        return None, None
    if content_encoding and content_encoding.strip().lower() in ("gzip", "x-gzip"):
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            inflated = inflater.decompress(body, PREVIEW_RAW_BYTES)
            complete = complete and inflater.eof and not inflater.unconsumed_tail
            body = inflated
        except zlib.error:
            return "(a gzip body that does not inflate)", None
    try:
        parsed = jsonutil.loads(body) if complete else None
    except (jsonutil.JSONError, ValueError):
        parsed = None
    key = None
    if isinstance(parsed, dict):
        key = parsed.pop("writeKey", None)
        batch = parsed.get("batch")
        if isinstance(batch, list):
            for member in batch:
                if isinstance(member, dict):
                    member.pop("writeKey", None)
        text = jsonutil.dumps(parsed).decode("utf-8", "replace")
    else:
        text = body[:PREVIEW_RAW_BYTES].decode("utf-8", "replace")
    key = key if isinstance(key, str) else None
    text = scrub(text, [*keys, key] if key else keys)   # before the cut: no key is left half shown
    return (text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"), key
