"""One HTTP request to the collector, judged: accepted as one record, or refused with a status.

Pure (no I/O, no clock of its own): the app hands in the request and the time, and gets back
`Accepted` (the one JSON line to give the sink, and how many events it holds) or a `Refusal`
(status, snake_case code, one-line message, headers). docs/collector.md is the reference for
the paths, auth forms, limits and codes decided here.

The hot path (a one-event request with Basic auth) is a dict lookup for the route, one base64
decode, one dict lookup for the source, one parse and one serialization of each event: about
15 µs on the development machine (see docs/collector.md, "Request handling: cost").
"""
import binascii
import ipaddress
import uuid
import zlib
from base64 import b64decode
from datetime import datetime, timezone
from typing import NamedTuple, Optional
from urllib.parse import parse_qs

import orjson

from collector.settings import CollectorSettings, Source
from transforms import jsonutil


class Request(NamedTuple):
    method: str
    path: str
    query: str            # the query string without '?'
    headers: dict         # lower-cased name -> str (the last one wins)
    body: bytes           # as received (maybe gzip), at most max_request_bytes
    client: str           # the peer's IP address ("" when unknown)


class Accepted(NamedTuple):
    source: Optional[Source]   # None for /v1/m (SDK metrics: answered 200, ignored)
    record: Optional[bytes]    # the one JSON line for the sink; None when there is nothing to keep
    events: int                # how many events the record holds (rate limits count these)


class Refusal(Exception):
    """The HTTP answer to a request that is not accepted; clients must not retry a 4xx other
    than 429. `message` is one line and never holds the write key."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"success": False, "code": self.code, "message": self.message})


# What each path is: (kind, the event type a single event gets when it has none).
_EVENT, _BATCH, _BEACON, _EITHER, _METRICS = "event", "batch", "beacon", "either", "metrics"
_TYPES = {"track": "track", "identify": "identify", "page": "page", "screen": "screen",
          "group": "group", "alias": "alias"}
ROUTES = {f"/v1/{name}": (_EVENT, event_type) for name, event_type in _TYPES.items()}
ROUTES.update({f"/v1/{name[0]}": (_EVENT, event_type) for name, event_type in _TYPES.items()})
ROUTES.update({"/v1/batch": (_BATCH, None), "/v1/import": (_BATCH, None), "/v1/b": (_BATCH, None),
               "/beacon/v1/batch": (_BEACON, None),   # RudderStack's sendBeacon: ?writeKey=, no headers
               "/api/v1/events": (_EITHER, None),     # SignalSmith: one event or {"batch": [...]}
               "/v1/m": (_METRICS, None)})            # analytics.js metrics: answered, never kept

_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_MEMBERS = 16   # SDKs send one
# Envelope keys the collector sets itself, or that must never be kept.
# "type" too: decode splits only an object with "batch" and no "type".
_ENVELOPE_OWN = ("batch", "writeKey", "source", "receivedAt", "type")


def route(path: str):
    """(kind, event type) of an event path, or None. Tolerates a doubled leading slash and a
    trailing one (SDKs configured with a host ending in '/')."""
    found = ROUTES.get(path)
    if found is None and path:
        found = ROUTES.get("/" + path.strip("/"))
    return found


# --- sources and proxies, indexed once per settings object -------------------------------------

_prepared = (None, {}, ())   # (settings, write key -> Source, trusted networks): one tuple, swapped whole


def _prepare(settings: CollectorSettings):
    global _prepared
    prepared = _prepared
    if prepared[0] is settings:
        return prepared
    index = {source.write_key: source for source in settings.sources if isinstance(source.write_key, str)}
    networks = tuple(ipaddress.ip_network(p, strict=False) for p in settings.limits.trusted_proxies)
    prepared = _prepared = (settings, index, networks)
    return prepared


def find_source(settings: CollectorSettings, write_key) -> Source:
    """The enabled source of `write_key`; Refusal 401 (missing or unknown) or 403 (disabled).
    The key never appears in a message."""
    if not write_key:
        raise Refusal(401, "missing_write_key", "no write key: send it as the HTTP Basic user name "
                                                "(empty password) or as \"writeKey\" in the JSON body")
    source = _prepare(settings)[1].get(write_key) if isinstance(write_key, str) else None
    if source is None:
        raise Refusal(401, "invalid_write_key", "the write key is not one this collector knows")
    if not source.enabled:
        raise Refusal(403, "source_disabled", f"source {source.name} is disabled")
    return source


def basic_user(authorization: str) -> Optional[str]:
    """The user name of an HTTP Basic Authorization header (the write key); None for another
    scheme; Refusal 401 when it is Basic but not base64 of UTF-8 "user[:password]"."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    credentials = credentials.strip()
    try:
        decoded = b64decode(credentials + "=" * (-len(credentials) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise Refusal(401, "malformed_authorization", "the Authorization header is not valid HTTP Basic: "
                                                      "expected base64 of \"WRITE_KEY:\"") from None
    return decoded.partition(":")[0]


# --- the client's address ------------------------------------------------------------------------

def _parse_ip(text: str):
    text = text.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text.startswith("["):                     # [2001:db8::1]:443
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1:                   # 203.0.113.9:5123
        host = text.partition(":")[0]
    else:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def trusted_networks(settings: CollectorSettings) -> tuple:
    """collector.trusted_proxies as networks, parsed once per settings object (the app's
    X-Forwarded-Proto/-Host and client_ip's X-Forwarded-For both ask)."""
    return _prepare(settings)[2]


def from_trusted_proxy(peer: str, networks: tuple) -> bool:
    """Whether the connection's peer address is one of the trusted proxies."""
    if not networks or not peer:
        return False
    address = _parse_ip(peer)
    return address is not None and any(address in n for n in networks)


def client_ip(request: Request, networks: tuple) -> str:
    """The address the events came from: the peer, unless the peer is a trusted proxy; then the
    right-most X-Forwarded-For address that is not a trusted proxy (addresses further left
    were written by the client and prove nothing). When every hop is trusted, the left-most;
    a hop that is not an address stops the walk at the last trusted one."""
    if not from_trusted_proxy(request.client, networks):
        return request.client
    forwarded = request.headers.get("x-forwarded-for", "")
    last = request.client
    for hop in reversed(forwarded.split(",")):
        if not hop.strip():
            continue
        address = _parse_ip(hop)
        if address is None:
            return last
        last = str(address)
        if not any(address in n for n in networks):
            return last
    return last


# --- the body -------------------------------------------------------------------------------------

def inflate(body: bytes, cap: int) -> bytes:
    """A gzip body inflated, never beyond `cap` bytes (+1 to know it was over): a gzip bomb
    costs at most `cap` bytes of memory before its 413. Several gzip members are joined, as
    gzip.decompress does, up to MAX_GZIP_MEMBERS (each costs a copy of the rest of the body: 25,000
    empty members in 500 KB took 0.9 s); anything else after a member is refused."""
    parts, total, data = [], 0, body
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(data, cap + 1 - total)
        except zlib.error as exc:
            raise Refusal(400, "malformed_gzip", f"Content-Encoding is gzip but the body is not gzip ({exc})") from None
        total += len(chunk)
        parts.append(chunk)
        if total > cap:
            raise Refusal(413, "request_too_large", f"the body inflates to more than {cap} bytes, the limit")
        if not inflater.eof:
            raise Refusal(400, "malformed_gzip", "the gzip body is truncated")
        data = inflater.unused_data
        if not data:
            return b"".join(parts) if len(parts) > 1 else chunk
        if not data.startswith(_GZIP_MAGIC):
            raise Refusal(400, "malformed_gzip", "bytes that are not gzip follow the gzip body")
    raise Refusal(400, "malformed_gzip", f"the body holds more than {MAX_GZIP_MEMBERS} gzip members")


def parse(data: bytes):
    """The body's JSON object; Refusal 400 for anything else."""
    if data.startswith(_BOM):
        data = data[3:]
    if not data or data.isspace():
        raise Refusal(400, "malformed_json", "the body is empty: send a JSON object")
    try:
        body = jsonutil.loads(data)
    except jsonutil.JSONError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise Refusal(400, "invalid_utf8", f"the body is not UTF-8 (byte {bad.start})") from None
        reason = " ".join(str(exc).split())[:200]
        raise Refusal(400, "malformed_json", "the body is not valid JSON: " + reason) from None
    if type(body) is not dict:
        raise Refusal(400, "not_an_object", f"the body must be a JSON object, got {jsonutil.kind(body)}")
    return body


def received_at(now: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z (naive datetimes are taken as UTC)."""
    if now.tzinfo is not None and now.utcoffset():
        now = now.astimezone(timezone.utc)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (now.year, now.month, now.day, now.hour, now.minute,
                                                    now.second, now.microsecond // 1000)


# --- the request ------------------------------------------------------------------------------------

def source_before_body(path: str, query: str, headers: dict, settings: CollectorSettings) -> Optional[Source]:
    """The source a request names before its body: HTTP Basic, or a beacon's ?writeKey=; None when
    only the body can say. Refusal 401/403 for a key that is malformed, unknown or disabled: the
    app calls this before it reads the body, so a wrong key costs no reading, inflating or parsing."""
    write_key = key_before_body(path, query, headers)
    return find_source(settings, write_key) if write_key else None


def key_before_body(path: str, query: str, headers: dict) -> Optional[str]:
    """The write key a request names before its body (source_before_body's reading, which the
    debugger shares to name a refused request's source): HTTP Basic, or a beacon's ?writeKey=.
    Refusal 401 for a malformed Basic header."""
    found = route(path)
    if found is None or found[0] is _METRICS:   # /v1/m is answered whatever it carries
        return None
    write_key = None
    authorization = headers.get("authorization")
    if authorization:
        write_key = basic_user(authorization)
    if not write_key and query and found[0] is _BEACON:
        write_key = (parse_qs(query).get("writeKey") or [None])[0]
    return write_key or None


_NOT_ASKED = object()


def handle(request: Request, settings: CollectorSettings, now: datetime, before_body=_NOT_ASKED) -> Accepted:
    """Judge one request to an event path: Accepted, or raise Refusal. See the module docstring.
    `before_body`: what source_before_body answered for this request, when the caller asked it
    already (the app does, before reading the body): the Basic header is not decoded twice."""
    found = route(request.path)
    if found is None:
        raise Refusal(404, "not_found", "no such path: events go to POST /v1/batch, /v1/track, ...")
    if request.method != "POST":
        raise Refusal(405, "method_not_allowed", "send events with POST", {"allow": "POST"})
    kind, event_type = found
    if kind is _METRICS:
        return Accepted(None, None, 0)
    limits = settings.limits
    headers = request.headers

    # Auth from the headers (or the beacon's query) first: an unknown key costs no inflating or parsing.
    source = source_before_body(request.path, request.query, headers, settings) if before_body is _NOT_ASKED \
        else before_body

    data = request.body
    encoding = headers.get("content-encoding")
    if encoding:
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            data = inflate(data, limits.max_request_bytes)
        elif encoding != "identity":
            raise Refusal(415, "unsupported_encoding", "Content-Encoding must be gzip or absent")
    if len(data) > limits.max_request_bytes:
        raise Refusal(413, "request_too_large",
                      f"the body is {len(data)} bytes, over the {limits.max_request_bytes}-byte limit")
    body = parse(data)

    key_in_body = body.pop("writeKey", None)
    if source is None:
        source = find_source(settings, key_in_body)

    if kind is _EVENT or (kind is _EITHER and not ("batch" in body and "type" not in body)):
        events, envelope = [body], None
        if event_type is not None and "type" not in body:
            body["type"] = event_type
    else:
        events = body.get("batch")
        if type(events) is not list:
            raise Refusal(400, "invalid_batch", f"\"batch\" must be an array of events, got "
                                                f"{'nothing' if 'batch' not in body else jsonutil.kind(events)}")
        envelope = body
    count = len(events)
    if count > limits.max_batch_events:
        raise Refusal(413, "too_many_events",
                      f"the batch holds {count} events, over the {limits.max_batch_events}-event limit")
    if count == 0:
        return Accepted(source, None, 0)
    return Accepted(source, _record(events, envelope, source, request, settings, now), count)


def _record(events: list, envelope: Optional[dict], source: Source, request: Request,
            settings: CollectorSettings, now: datetime) -> bytes:
    """The batch envelope line: each event enriched and serialized once (its size checked as it
    will be stored), then joined with the envelope's own keys, the source and receivedAt."""
    limits = settings.limits
    stamp = received_at(now)
    ip = client_ip(request, _prepare(settings)[2])
    envelope_context = envelope.get("context") if envelope else None
    if ip and type(envelope_context) is dict:
        if envelope_context.get("ip") is None:
            envelope_context["ip"] = ip       # decode gives it to every event without a context
    parts = []
    max_event_bytes = limits.max_event_bytes
    for index, event in enumerate(events):
        if type(event) is dict:   # anything else is kept as sent: the pipeline dead-letters it
            event.pop("writeKey", None)
            event["receivedAt"] = stamp
            if event.get("messageId") in (None, ""):
                event["messageId"] = str(uuid.uuid4())
            if ip:
                context = event.get("context", _ABSENT)
                if type(context) is dict:
                    if context.get("ip") is None:
                        context["ip"] = ip
                elif context is None or (context is _ABSENT and type(envelope_context) is not dict):
                    event["context"] = {"ip": ip}
        part = _dump(event, index)
        if len(part) > max_event_bytes:
            where = f"event {index} of the batch" if envelope is not None else "the event"
            raise Refusal(413, "event_too_large", f"{where} is {len(part)} bytes (with the collector's "
                                                  f"additions), over the {max_event_bytes}-byte limit")
        parts.append(part)
    tail = [b'],"source":', jsonutil.dumps(source.name), b',"receivedAt":"', stamp.encode(), b'"']
    if envelope:
        rest = {k: v for k, v in envelope.items() if k not in _ENVELOPE_OWN}
        if rest:
            tail.append(b"," + _dump(rest, None)[1:-1])
    record = b'{"batch":[' + b",".join(parts) + b"".join(tail) + b"}"
    if len(record) > limits.largest_record(source.name):  # decode accepts this much: never acknowledge more
        raise Refusal(413, "request_too_large", f"with the collector's additions the record is {len(record)} "
                                                f"bytes, over the {limits.largest_record(source.name)}-byte limit")
    return record


_ABSENT = object()


def _dump(value, index) -> bytes:
    try:
        return jsonutil.dumps(value)
    except (RecursionError, TypeError, ValueError):  # parsed (orjson reads 1024 levels) but not writable
        what = "the envelope" if index is None else f"event {index}"
        raise Refusal(400, "too_deeply_nested", f"{what} is nested too deeply to store") from None
