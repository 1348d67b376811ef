"""What a refused request's body may show: a bounded preview without its write key.

Beam-free (the collector's `serve --sink` imports no pipeline stage), like the rest of what the
debugger needs before it is on: settings, store, api, service.
"""
import re
import zlib
from typing import Optional

from transforms import jsonutil

PREVIEW_CHARS = 1024           # of a refused request's body, the write key removed
PREVIEW_RAW_BYTES = 8 * 1024   # read of a refused body to make that preview (gzip: inflated up to this)
_WRITE_KEY = re.compile(r'("writeKey"\s*:\s*)("(?:[^"\\]|\\.)*(?:"|$)|[^,}\s]*)')
_REMOVED = '"(removed)"'


def preview(body: bytes, content_encoding: Optional[str], complete: bool) -> tuple:
    """(text, write key): at most PREVIEW_CHARS of a refused request's body as text, never its
    write key (parsed and written again without `writeKey` when it is whole JSON, else every
    `"writeKey": ...` replaced), and the body's write key, for the caller to find the source
    (never kept). `complete`: `body` is the whole body (not only its first bytes)."""
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
        text = _WRITE_KEY.sub(lambda m: m.group(1) + _REMOVED, body[:PREVIEW_RAW_BYTES].decode("utf-8", "replace"))
    return (text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"), key if isinstance(key, str) else None
