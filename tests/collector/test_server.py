"""`python -m pipeline serve` as a process of its own on 127.0.0.1, sent real HTTP: every
endpoint, CORS, the body and header bounds, slow clients, many clients, the drain on SIGTERM,
a sink that fails, and kill -9 under load."""
import errno
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.collector.serving import ROOT, basic, request, spool_lines, write_config

EVENT = {"type": "track", "event": "Order Completed", "userId": "u-1", "properties": {"total": 12.5}}


def address(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def raw_exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes
    or a full answer with Content-Length has arrived."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock) -> bytes:
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            found = re.search(rb"content-length: *(\d+)", head, re.I)
            if found and len(body) >= int(found.group(1)):
                return received


def track(url: str, key: str = "key-server", event: dict = None, headers: dict = None, path: str = "/v1/track"):
    body = json.dumps(event or {**EVENT, "messageId": str(uuid.uuid4())}).encode()
    return request(url + path, "POST", body, {"Authorization": basic(key), "Content-Type": "application/json",
                                              **(headers or {})})


# ---------------------------------------------------------------- endpoints

def test_events_are_acknowledged_once_in_the_spool_and_the_start_line_names_sources_not_keys(collector):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    status, _, body = track(collector.url, event={**EVENT, "messageId": ids[0]})
    assert (status, json.loads(body)) == (200, {"success": True})
    status, _, _ = request(collector.url + "/v1/batch", "POST",
                           json.dumps({"writeKey": "key-server", "batch": [{**EVENT, "messageId": i}
                                                                           for i in ids[1:]]}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200
    assert collector.stop() == 0
    records = spool_lines(collector.spool)
    assert [e["messageId"] for r in records for e in r["batch"]] == ids
    assert {r["source"] for r in records} == {"server"}
    assert not list(collector.spool.glob("*.open")), "close() leaves no open spool file"
    log = collector.log()
    assert "sources: web, server, tight, off (disabled)" in log and "spool" in log
    assert "key-" not in log


def test_refusals_are_json_with_their_status(collector):
    status, _, body = track(collector.url, key="key-unknown")
    assert status == 401 and json.loads(body)["code"] == "invalid_write_key"
    assert track(collector.url, key="key-off")[0] == 403
    status, _, body = request(collector.url + "/v1/track", "POST", b"{not json", {"Authorization": basic("key-server")})
    assert status == 400 and json.loads(body)["success"] is False
    assert request(collector.url + "/v1/nowhere", "POST", b"{}")[0] == 404
    assert request(collector.url + "/v1/track", "PUT", b"{}")[0] == 405
    assert request(collector.url + "/v1/m", "POST", b'{"series": []}')[0] == 200
    # analytics.js posts its metrics from the page: without CORS headers the browser reports an error
    status, headers, _ = request(collector.url + "/v1/m", "POST", b'{"series": []}',
                                 {"Origin": "https://shop.example.com", "Content-Type": "text/plain"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://shop.example.com"


def test_rate_limit_429_with_retry_after(collector):
    statuses = [track(collector.url, key="key-tight")[0] for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    status, headers, body = track(collector.url, key="key-tight")
    assert status == 429 and int(headers["retry-after"]) >= 1 and "x-ratelimit-reset" in headers


def test_health_ready_metrics(collector):
    assert request(collector.url + "/health")[0] == 200
    status, _, body = request(collector.url + "/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    track(collector.url)
    track(collector.url, key="key-unknown")
    # too large: answered 413 at once, the connection closed (a client writing the whole body
    # may see a broken pipe instead of the answer: send only its start)
    answer = raw_exchange(collector.url, f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}"
                                         f"\r\nContent-Length: 600000\r\n\r\n".encode() + b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413")
    for _ in range(7):
        track(collector.url, key="key-tight")
    status, headers, body = request(collector.url + "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'sluice_collector_requests_total{source="server",status="200"} 1.0' in text
    assert 'sluice_collector_events_accepted_total{source="server"} 1.0' in text
    assert 'sluice_collector_request_bytes_total{source="server"}' in text
    assert re.search(r'sluice_collector_refused_total\{code="invalid_write_key",status="401"\} 1.0', text)
    assert re.search(r'sluice_collector_refused_total\{code="request_too_large",status="413"\} 1.0', text)
    assert re.search(r'sluice_collector_refused_total\{code="rate_limited",status="429"\} [12].0', text)
    assert "sluice_collector_handoff_seconds_bucket" in text and "sluice_collector_handoff_seconds_count 6.0" in text
    assert "key-" not in text


def test_analytics_js_settings_point_back_at_the_collector(collector):
    host, port = address(collector.url)
    status, headers, body = request(collector.url + "/v1/projects/key-web/settings",
                                    headers={"Origin": "https://shop.example.com"})
    settings = json.loads(body)
    assert status == 200
    assert settings["integrations"]["Segment.io"] == {"apiKey": "key-web", "apiHost": f"{host}:{port}/v1",
                                                     "protocol": "http"}
    assert settings["metrics"]["sampleRate"] == 0
    assert headers["access-control-allow-origin"] == "https://shop.example.com"
    assert headers["cache-control"] == "no-store"   # it depends on the request's Host and Origin
    # Any key, any origin: a refused settings request makes analytics.js report to Segment from
    # the visitor's browser; the events these keys or origins then send are refused instead.
    for key, origin in (("key-unknown", "https://shop.example.com"), ("key-off", "https://shop.example.com"),
                        ("key-web", "https://evil.example")):
        status, headers, body = request(collector.url + f"/v1/projects/{key}/settings", headers={"Origin": origin})
        assert status == 200 and headers["access-control-allow-origin"] == origin
        assert json.loads(body)["integrations"]["Segment.io"]["apiKey"] == key
    assert track(collector.url, key="key-unknown")[0] == 401
    assert track(collector.url, key="key-web", headers={"Origin": "https://evil.example"})[0] == 403
    assert request(collector.url + "/v1/projects//settings")[0] == 404
    metrics = request(collector.url + "/metrics")[2].decode()
    assert 'sluice_collector_requests_total{source="web",status="200"} 2.0' in metrics


def test_behind_tls_termination_the_settings_name_the_public_url_whatever_the_host(start_collector, tmp_path):
    """On Cloud Run TLS ends before the container: the request is http and its Host is whatever
    the client sent. collector.public_url is what analytics.js is told to send to, never a Host
    header a client (or a cache in between) chose."""
    config = write_config(tmp_path, collector={"public_url": "https://collect.example.com/"})
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    with socket.create_connection(address(collector.url), timeout=10) as sock:
        sock.sendall(b"GET /v1/projects/key-web/settings HTTP/1.1\r\nHost: evil.example\r\n"
                     b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example\r\n\r\n")
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"cache-control: no-store" in head.lower(), head
    assert json.loads(body)["integrations"]["Segment.io"] == {"apiKey": "key-web", "protocol": "https",
                                                              "apiHost": "collect.example.com/v1"}
    status, headers, _ = request(collector.url + "/sourceConfig/?writeKey=key-server")
    assert status == 200 and headers["cache-control"] == "no-store"


def test_without_public_url_a_trusted_proxy_names_the_scheme_and_host(start_collector, tmp_path):
    """No public_url: X-Forwarded-Proto and -Host are believed from a trusted proxy only (here the
    test, on 127.0.0.1), as X-Forwarded-For is (one parsing of trusted_proxies serves both)."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "collect.example.com"}
    for proxies, expected in ((["127.0.0.1"], ("collect.example.com/v1", "https")), (["10.0.0.0/8"], None)):
        config = write_config(tmp_path, collector={"trusted_proxies": proxies})
        collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
        status, _, body = request(collector.url + "/v1/projects/key-web/settings", headers=forwarded)
        segment = json.loads(body)["integrations"]["Segment.io"]
        host, port = address(collector.url)
        assert (segment["apiHost"], segment["protocol"]) == (expected or (f"{host}:{port}/v1", "http"))
        assert collector.stop() == 0


def test_rudderstack_source_config(collector):
    status, _, body = request(collector.url + "/sourceConfig/?p=npm&v=3.0&writeKey=key-server")
    source = json.loads(body)["source"]
    assert status == 200 and source["id"] == "server" and source["enabled"] is True
    assert source["config"] == {} and source["destinations"] == []
    status, _, body = request(collector.url + "/sourceConfig/", headers={"Authorization": basic("key-server")})
    assert status == 200
    assert request(collector.url + "/sourceConfig/?writeKey=nope")[0] == 401


def test_cors_preflight_is_permissive_and_the_origin_is_enforced_on_the_request(collector):
    status, headers, _ = request(collector.url + "/v1/t", "OPTIONS", headers={
        "Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://anywhere.example"
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-retry-count"} <= allowed
    assert "POST" in headers["access-control-allow-methods"] and int(headers["access-control-max-age"]) > 0
    # web allows only https://shop.example.com
    status, headers, _ = track(collector.url, key="key-web", path="/v1/t",
                               headers={"Origin": "https://shop.example.com", "Content-Type": "text/plain"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "retry-after" in headers["access-control-expose-headers"].lower()
    status, _, body = track(collector.url, key="key-web", path="/v1/t", headers={"Origin": "https://evil.example"})
    assert status == 403 and json.loads(body)["code"] == "origin_not_allowed"
    # server allows any origin; a request without Origin (a server-side SDK) is not concerned
    assert track(collector.url, headers={"Origin": "https://evil.example"})[1]["access-control-allow-origin"] == "*"
    assert track(collector.url, key="key-web")[0] == 200
    assert collector.stop() == 0
    assert [r["source"] for r in spool_lines(collector.spool)] == ["web", "server", "web"]


# ---------------------------------------------------------------- bounds and slow clients

def test_413_before_the_rest_of_the_body_is_read(collector):
    """Content-Length over the limit: answered at once, the connection closed, unread. Chunked,
    with no length: answered once the limit is passed, while the client is still sending."""
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
            f"Content-Type: application/json\r\n")
    with socket.create_connection(address(collector.url), timeout=10) as sock:
        sock.sendall((head + "Content-Length: 100000000\r\n\r\n").encode() + b"{" * 1000)
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
        assert sock.recv(10) == b""   # closed
    with socket.create_connection(address(collector.url), timeout=10) as sock:
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        sent, answer = 0, b""
        sock.settimeout(0.05)
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        while sent < 50_000_000:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
            try:
                answer += sock.recv(65536)
            except socket.timeout:
                continue
            if answer:
                break
        sock.settimeout(10)
        try:
            answer += read_answer(sock)
        except ConnectionResetError:
            pass
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 2_000_000, f"the server read {sent:,} bytes before answering 413"
    assert track(collector.url)[0] == 200


@pytest.mark.parametrize("authorization, status, code", [
    (basic("key-unknown"), 401, b"invalid_write_key"), (basic("key-off"), 403, b"source_disabled"),
    ("Basic %%%", 401, b"malformed_authorization")])
def test_a_wrong_basic_key_is_refused_before_the_body_is_read(collector, authorization, status, code):
    """The client sends only the head of a request declaring 400,000 bytes (under the limit):
    the answer comes without a byte of the body, and the connection is closed (it is unread)."""
    with socket.create_connection(address(collector.url), timeout=10) as sock:   # a hang guard
        sock.sendall(f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n".encode())
        try:
            answer = read_answer(sock)
        except socket.timeout:
            raise AssertionError("no answer: the server waited for the body") from None
        assert answer.startswith(b"HTTP/1.1 %d" % status) and code in answer, answer[:300]
        assert b"connection: close" in answer.lower()
        assert sock.recv(10) == b""
    assert track(collector.url)[0] == 200


def test_headers_are_bounded(collector):
    answer = raw_exchange(collector.url, b"GET /health HTTP/1.1\r\nHost: x\r\n" +
                          b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(40)) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    assert b"access-control-allow-origin" not in answer.lower()
    assert request(collector.url + "/health")[0] == 200
    # A browser's request: the 431 carries CORS headers, or the SDK sees a CORS error, not the status
    answer = raw_exchange(collector.url, b"POST /v1/t HTTP/1.1\r\nHost: x\r\nOrigin: https://shop.example.com\r\n" +
                          b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(40)) + b"\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 431") and b"access-control-allow-origin: https://shop.example.com" in head
    assert b"retry-after" in head.split(b"access-control-expose-headers:")[1].split(b"\r\n")[0]


def test_a_header_that_never_ends_is_431_at_the_bound_not_held_in_memory(collector):
    """httptools keeps a header's name and value until it ends, and calls back only then: a
    client sending `X-Big: ` and then megabytes of `a` must be cut at the header bound, as
    raw bytes, not held (it grew the server by 27 MB a connection-second) until the header
    deadline. A normal request is served meanwhile; pipelined keep-alive heads still count."""
    before = collector.rss_peak_kb()
    chunk, cap = b"a" * 65536, 8 * 1024 * 1024
    head = f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\nX-Big: ".encode()
    event = json.dumps({**EVENT, "messageId": "pipelined"}).encode()
    ok = (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
          f"Content-Type: application/json\r\nContent-Length: {len(event)}\r\n\r\n").encode() + event
    for prefix in (b"", ok):   # a fresh connection; one whose first request came in the same read
        socks = [socket.create_connection(address(collector.url), timeout=30) for _ in range(8)]
        try:
            answers, sent = [], []
            for sock in socks:
                sock.sendall(prefix + head)
                total, answer = 0, b""
                sock.setblocking(False)
                while total < cap and b"HTTP/1.1 431" not in answer:
                    try:
                        total += sock.send(chunk)
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    try:
                        answer += sock.recv(65536)
                    except BlockingIOError:
                        pass
                    except ConnectionResetError:
                        break
                sock.settimeout(30)   # a hang guard: the server closes after its 431
                try:
                    while data := sock.recv(65536):
                        answer += data
                except (ConnectionResetError, socket.timeout):
                    pass
                answers.append(answer)
                sent.append(total)
                assert track(collector.url)[0] == 200
            for answer, total in zip(answers, sent):
                # (after a pipelined request the 431 may come first: the connection closes with it)
                assert b"HTTP/1.1 431" in answer, (answer[:300], f"{total:,} bytes sent")
        finally:
            for sock in socks:
                sock.close()
    peak = collector.rss_peak_kb()
    # (the bytes a client sent say little: loopback's socket buffers take megabytes unread)
    assert peak - before < 24 * 1024, f"peak RSS {before / 1024:.0f} MB before, {peak / 1024:.0f} MB after"
    assert request(collector.url + "/health")[0] == 200
    print(f"peak RSS {before / 1024:.0f} MB before, {peak / 1024:.0f} MB after; sent {sent}")


# The header deadline 3 s and swept every 0.2 s (10 s and 1 s by default): the same deadline,
# run sooner; _STALLING below sets them the same way.
_SHORT_HEADER_DEADLINE = """import sys
import collector.server as server
server.BoundedProtocol.header_timeout, server.SWEEP_SECONDS = 3.0, 0.2
from pipeline.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_client_sending_headers_byte_by_byte_is_timed_out(start_collector, tmp_path):
    """The header deadline (collector.server.HEADER_TIMEOUT, 3 s here) cuts a slowloris client
    sending a byte every 50 ms, and the collector serves others meanwhile."""
    collector = start_collector(["serve", "--config", str(write_config(tmp_path)), "--sink", str(tmp_path / "spool")],
                                command=[sys.executable, "-c", _SHORT_HEADER_DEADLINE])
    data = (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n".encode()
            + b"X-Slow: " + b"a" * 200)
    started = time.monotonic()
    served = 0
    with socket.create_connection(address(collector.url), timeout=30) as sock:
        closed_after = None
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.05)
            try:
                if sock.recv(100) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - started
                break
            if byte == ord("\n"):
                assert request(collector.url + "/health", timeout=2)[0] == 200
                served += 1
            if time.monotonic() - started > 15:
                break
    assert closed_after is not None, "the connection was still open after 15 s of a header trickle"
    assert 3 <= closed_after <= 5, closed_after
    assert served >= 1, f"{served} other requests served during the trickle"


def hammer(url: str, payload: bytes, count: int, hang_guard: float = 120.0) -> list:
    """`count` connections opened at once, each sending `payload` as soon as it is connected and
    kept open until every one is answered; each one's answer status, or what became of it
    ('closed': by the server, unanswered). Raw non-blocking sockets and one selector: an asyncio
    client of 10,000 streams on a loaded machine took over 10 s to write on connections the
    kernel had connected, and the collector rightly closed those at its header deadline."""
    selector, statuses, answered = selectors.DefaultSelector(), [], []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        failed = sock.connect_ex(address(url))
        if failed not in (0, errno.EINPROGRESS):
            statuses.append(errno.errorcode.get(failed, failed))
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE, bytearray())
    deadline = time.monotonic() + hang_guard
    while selector.get_map() and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1):
            sock, received = key.fileobj, key.data
            try:
                if events & selectors.EVENT_WRITE:
                    failed = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if failed:
                        raise OSError(failed, os.strerror(failed))
                    sock.sendall(payload)   # a few hundred bytes: a new socket's buffer takes them at once
                    selector.modify(sock, selectors.EVENT_READ, received)
                    continue
                chunk = sock.recv(4096)
                received += chunk
                if chunk and b"\r\n" not in received:
                    continue
                statuses.append(int(received.split()[1]) if chunk else "closed")
            except OSError as exc:
                statuses.append(errno.errorcode.get(exc.errno, type(exc).__name__))
            selector.unregister(sock)
            answered.append(sock)
    for key in list(selector.get_map().values()):
        statuses.append("no answer")
        key.fileobj.close()
    selector.close()
    for sock in answered:
        sock.close()
    return statuses


def test_10000_concurrent_small_requests(collector):
    """10,000 connections at once, each sending one small event: every one answered (200, or
    503 past the connection limit, which SDKs retry), the server alive after, and its peak
    memory bounded (its size at start is mostly Beam's modules, which the config imports)."""
    event = json.dumps({**EVENT, "messageId": "m"}).encode()
    payload = (f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(event)}\r\n\r\n").encode() + event
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 11_000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    before = collector.rss_peak_kb()
    started = time.monotonic()
    statuses = hammer(collector.url, payload, 10_000)
    elapsed = time.monotonic() - started
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert len(statuses) == 10_000
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) >= 9_000, counts
    assert request(collector.url + "/health")[0] == 200
    peak = collector.rss_peak_kb()
    # about 14 KB a connection (uvicorn's protocol, parser, transport, the request's task)
    assert peak - before < 250 * 1024, f"peak RSS {before / 1024:.0f} MB before, {peak / 1024:.0f} MB during"
    print(f"10,000 requests in {elapsed:.1f} s: {counts}; peak RSS {before / 1024:.0f} MB before, "
          f"{peak / 1024:.0f} MB during")


# The fault a loaded machine produces at random: the collector's event loop busy while requests
# arrive. A connection sending STALL blocks the loop (in its read callback, as a burst of reads
# would) until the test creates the release file; the header deadline is 1 s and swept every 0.2 s.
_STALLING = """import os, sys, time
import collector.server as server
server.BoundedProtocol.header_timeout, server.SWEEP_SECONDS = 1.0, 0.2
real = server.BoundedProtocol.data_received

def data_received(self, data):
    if not data.startswith(b"STALL"):
        return real(self, data)
    open(os.environ["STALLED"], "w").close()
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.01)

server.BoundedProtocol.data_received = data_received
from pipeline.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_request_sent_in_time_is_answered_though_the_server_was_too_busy_to_read_it(start_collector, tmp_path):
    """The header deadline is the client's: a request whose bytes arrived in time but waited
    unread while the server's event loop was busy is answered when the loop reads it, not closed
    at the deadline (which a sweep run before the read would do)."""
    stalled, release = tmp_path / "stalled", tmp_path / "release"
    collector = start_collector(["serve", "--config", str(write_config(tmp_path)), "--sink", str(tmp_path / "spool")],
                                env={"STALLED": str(stalled), "RELEASE": str(release)},
                                command=[sys.executable, "-c", _STALLING])
    event = json.dumps({**EVENT, "messageId": "in-time"}).encode()
    with socket.create_connection(address(collector.url), timeout=30) as sock, \
            socket.create_connection(address(collector.url), timeout=30) as staller:   # timeouts: hang guards
        assert request(collector.url + "/health")[0] == 200   # accepted after sock: sock's deadline runs
        staller.sendall(b"STALL")
        guard = time.monotonic() + 30
        while not stalled.exists():
            assert time.monotonic() < guard, "the collector never stalled"
            time.sleep(0.01)
        sock.sendall(f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
                     f"Content-Length: {len(event)}\r\n\r\n".encode() + event)
        time.sleep(1.5)   # the request waits unread past its 1 s header deadline
        release.touch()
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert collector.stop() == 0
    assert [e["messageId"] for r in spool_lines(tmp_path / "spool") for e in r["batch"]] == ["in-time"]


# ---------------------------------------------------------------- shutdown and failures

def test_sigterm_finishes_requests_in_flight_then_exits_0(collector):
    """Requests whose bodies are still arriving when SIGTERM comes are answered 200 and kept;
    a new connection is refused; the process exits 0."""
    socks, ids = [], []
    for _ in range(20):
        mid = str(uuid.uuid4())
        body = json.dumps({**EVENT, "messageId": mid}).encode()
        sock = socket.create_connection(address(collector.url), timeout=15)
        sock.sendall((f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:10])
        socks.append((sock, body))
        ids.append(mid)
    time.sleep(0.3)
    started = time.monotonic()
    collector.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):
        socket.create_connection(address(collector.url), timeout=2).close()
    for sock, body in socks:
        sock.sendall(body[10:])
    answers = [read_answer(sock) for sock, _ in socks]
    for sock, _ in socks:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
    assert all(b"connection: close" in a.lower() for a in answers)
    collector.process.wait(15)
    assert collector.process.returncode == 0
    assert time.monotonic() - started < 10
    assert sorted(e["messageId"] for r in spool_lines(collector.spool) for e in r["batch"]) == sorted(ids)
    assert "draining" in collector.log()


FAULTY = """
import os, sys
from collector.sinks import SinkUnavailable
from collector.sinks.spool import SpoolSink
import collector.sinks.spool as spool

class Faulty(SpoolSink):
    # the real spool sink, unavailable while the file FLAG exists
    async def put(self, records, attributes=None):
        if os.path.exists(os.environ["FLAG"]):
            raise SinkUnavailable("injected fault", retry_after=7)
        return await super().put(records)
    async def ready(self):
        return not os.path.exists(os.environ["FLAG"]) and await super().ready()

spool.SpoolSink = Faulty
from pipeline.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sink_unavailable_is_503_with_retry_after(start_collector, tmp_path):
    flag = tmp_path / "down"
    config = write_config(tmp_path)
    collector = start_collector(["serve", "--config", str(config), "--sink", str(tmp_path / "spool")],
                                env={"FLAG": str(flag)}, command=[sys.executable, "-c", FAULTY])
    assert track(collector.url)[0] == 200
    flag.touch()
    status, headers, body = track(collector.url)
    assert status == 503 and headers["retry-after"] == "7" and json.loads(body)["code"] == "sink_unavailable"
    assert request(collector.url + "/ready")[0] == 503
    assert request(collector.url + "/health")[0] == 200
    flag.unlink()
    assert track(collector.url)[0] == 200
    assert collector.stop() == 0
    assert len(spool_lines(tmp_path / "spool")) == 2


def test_an_unexpected_exception_is_a_logged_500_and_the_server_keeps_serving(start_collector, tmp_path):
    broken = FAULTY.replace('raise SinkUnavailable("injected fault", retry_after=7)',
                            'raise RuntimeError("injected bug")')
    config = write_config(tmp_path)
    collector = start_collector(["serve", "--config", str(config), "--sink", str(tmp_path / "spool")],
                                env={"FLAG": str(tmp_path / "bug")}, command=[sys.executable, "-c", broken])
    (tmp_path / "bug").touch()
    secret_body = {**EVENT, "properties": {"email": "person@example.com"}}
    status, _, body = track(collector.url, event=secret_body)
    assert status == 500 and json.loads(body)["code"] == "internal_error"
    (tmp_path / "bug").unlink()
    assert track(collector.url)[0] == 200
    assert collector.stop() == 0
    log = collector.log()
    assert "RuntimeError: injected bug" in log and "Traceback" in log
    assert "person@example.com" not in log and "key-server" not in log


def test_kill_9_under_load_then_restart_keeps_every_acknowledged_event(start_collector, tmp_path):
    config, spool = write_config(tmp_path), tmp_path / "spool"
    args = ["--config", str(config), "--sink", str(spool)]
    collector = start_collector(args)
    acknowledged, stop = [], threading.Event()

    def send():
        while not stop.is_set():
            ids = [str(uuid.uuid4()) for _ in range(5)]
            body = json.dumps({"batch": [{**EVENT, "messageId": i} for i in ids]}).encode()
            try:
                status, _, _ = request(collector.url + "/v1/batch", "POST", body,
                                       {"Authorization": basic("key-server")}, timeout=5)
            except OSError:
                continue
            if status == 200:
                acknowledged.extend(ids)

    senders = [threading.Thread(target=send) for _ in range(8)]
    for sender in senders:
        sender.start()
    time.sleep(2)
    collector.kill()
    stop.set()
    for sender in senders:
        sender.join()
    assert len(acknowledged) > 100
    assert list(spool.glob("*.jsonl.open")), "a killed collector leaves its open file"
    restarted = start_collector(args)
    assert restarted.stop() == 0
    stored = [e["messageId"] for r in spool_lines(spool) for e in r["batch"]]
    assert not set(acknowledged) - set(stored)
    assert not list(spool.glob("*.open"))


# ---------------------------------------------------------------- the command

@pytest.mark.parametrize("args, named", [
    ([], "--sink"),
    (["--sink", "/tmp/x", "--warehouse", "duckdb:///x.duckdb"], "--warehouse"),
    (["--sink", "/tmp/x", "--port", "99999"], "--port"),
    (["--sink", "/tmp/x", "--port", "http"], "--port"),
    (["--sink", "/tmp/x", "--bogus"], "--bogus"),
    (["--sinc", "/tmp/x"], "unrecognized option --sinc (did you mean --sink?)"),
    (["--warehouse", "bigquery://p/d"], "--warehouse"),
    (["--sink", "pubsub://topics/t"], "--sink"),
    (["--sink", "/tmp/x"], "--config"),
])
def test_option_errors_are_one_line_exit_2(args, named):
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve"] + args, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sluice: error:") and named in lines[0], result.stderr


def test_help():
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--warehouse duckdb:///PATH" in result.stdout


@pytest.mark.slow
def test_embedded_mode_shows_the_loader_on_metrics_and_loads_everything_at_sigterm(start_collector, tmp_path):
    import duckdb
    config, warehouse = write_config(tmp_path), tmp_path / "w.duckdb"
    collector = start_collector(["--config", str(config), "--warehouse", f"duckdb:///{warehouse}"])
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for mid in ids:
        assert track(collector.url, event={**EVENT, "messageId": mid})[0] == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = request(collector.url + "/metrics")[2].decode()
        if "sluice_embedded_runs_total" in text and "sluice_embedded_runs_total 0.0" not in text:
            break
        time.sleep(0.5)
    assert "sluice_embedded_records_accepted_total 20.0" in text
    assert collector.stop() == 0
    with duckdb.connect(str(warehouse), read_only=True) as db:
        assert sorted(r[0] for r in db.execute("SELECT message_id FROM tracks").fetchall()) == sorted(ids)
    assert "embedded, warehouse duckdb:///" in collector.log() and "conservation holds" in collector.log()


def test_a_taken_port_or_a_sink_that_cannot_start_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--config", str(config),
                                 "--sink", str(tmp_path / "spool"), "--port", str(port)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"sluice: error: --port: cannot listen on 127.0.0.1:{port}: Address already in use")
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--config", str(config),
                             "--sink", str(tmp_path / "file" / "spool"), "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "cannot start" in lines[0], result.stderr


def test_past_the_connection_limit_requests_are_503_json_with_retry_after(start_collector, tmp_path):
    script = ("import sys\nimport collector.server\ncollector.server.MAX_CONNECTIONS = 4\n"
              "from pipeline.main import main\nsys.exit(main(sys.argv[1:]))\n")
    config = write_config(tmp_path)
    collector = start_collector(["serve", "--config", str(config), "--sink", str(tmp_path / "spool")],
                                command=[sys.executable, "-c", script])
    idle = [socket.create_connection(address(collector.url)) for _ in range(4)]
    try:
        time.sleep(0.2)
        status, headers, body = track(collector.url, headers={"Origin": "https://shop.example.com"})
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["code"] == "too_many_connections"
        assert headers["access-control-allow-origin"] == "https://shop.example.com"
        assert "retry-after" in headers["access-control-expose-headers"].lower()
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert track(collector.url)[0] == 200


def test_sigint_drains_and_exits_0_too(collector):
    assert track(collector.url)[0] == 200
    collector.process.send_signal(signal.SIGINT)
    assert collector.process.wait(15) == 0
    assert len(spool_lines(collector.spool)) == 1


def test_pubsub_sink_one_message_per_request_with_its_attributes(start_collector, make_topic, tmp_path):
    topic = make_topic("collector")
    collector = start_collector(["--config", str(write_config(tmp_path)), "--sink", f"pubsub://{topic.path}"])
    assert "sink pubsub://" in collector.log()
    assert request(collector.url + "/ready")[0] == 200
    assert track(collector.url, path="/v1/t", headers={"Content-Type": "text/plain"},
                 event={**EVENT, "messageId": "one"})[0] == 200
    body = json.dumps({"batch": [{**EVENT, "messageId": "two"}, {**EVENT, "messageId": "three"}]}).encode()
    assert request(collector.url + "/v1/batch", "POST", body, {"Authorization": basic("key-server"),
                                                               "Content-Type": "application/json"})[0] == 200
    assert collector.stop() == 0
    messages = sorted(topic.pull_all(), key=lambda m: len(json.loads(m.data)["batch"]))
    assert [[e["messageId"] for e in json.loads(m.data)["batch"]] for m in messages] == [["one"], ["two", "three"]]
    assert [dict(m.attributes)["content_type"] for m in messages] == ["text/plain", "application/json"]
    for message in messages:
        attributes, record = dict(message.attributes), json.loads(message.data)
        assert attributes["source"] == record["source"] == "server"
        assert attributes["received_at"] == record["receivedAt"] and attributes["received_at"].endswith("Z")


def test_gcs_sink_records_land_as_objects(start_collector, gcs_bucket, tmp_path):
    bucket, client = gcs_bucket
    collector = start_collector(["--config", str(write_config(tmp_path)), "--sink", f"gs://{bucket}/events/"])
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for mid in ids:
        assert track(collector.url, event={**EVENT, "messageId": mid})[0] == 200
    assert collector.stop() == 0
    lines = [line for blob in client.bucket(bucket).list_blobs(prefix="events/")
             for line in blob.download_as_bytes().split(b"\n") if line.strip()]
    assert sorted(e["messageId"] for line in lines for e in json.loads(line)["batch"]) == sorted(ids)


def test_truncated_bodies_and_garbage_leave_nothing_and_the_server_serving(collector):
    head = f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('key-server')}\r\n"
    with socket.create_connection(address(collector.url), timeout=10) as sock:   # gone mid-body
        sock.sendall((head + "Content-Length: 100\r\n\r\n").encode() + b'{"event": "x"')
    for garbage in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/track HTTP/1.1\r\n"
                    b"Content-Length: -5\r\n\r\n", b"POST /v1/track HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"zz\r\n"):
        answer = raw_exchange(collector.url, garbage)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    body = b'{"event": "\xff\xfe", "userId": "u"}'
    status, _, _ = request(collector.url + "/v1/track", "POST", body, {"Authorization": basic("key-server")})
    assert status == 400
    assert track(collector.url)[0] == 200
    assert collector.stop() == 0
    assert len(spool_lines(collector.spool)) == 1


# ---------------------------------------------------------------- start-up

# The live debugger checks events with the pipeline's own decode, normalize and contracts, whose
# modules import Beam: a debugger that is on (the default on loopback) loads it, by design
# (collector.debugger.service). The container listens beyond loopback, where without a token the
# debugger is off; on 127.0.0.1 these tests turn it off to see the sink modes' own imports.
DEBUGGER_OFF = {"enabled": False}


def test_the_sink_modes_never_load_apache_beam(start_collector, tmp_path):
    """`serve --sink` (the Cloud Run container) must not import Beam: it cost each start about
    1 s and 130 MB of resident memory, for the embedded mode alone. Beam's compiled modules are
    shared objects under apache_beam/, mapped into any process that imported it."""
    import apache_beam.coders.coder_impl  # noqa: F401 - a compiled module: the probe's own proof
    assert "/apache_beam/" in open("/proc/self/maps").read(), "the probe cannot see Beam where it is loaded"
    config = write_config(tmp_path, debugger=DEBUGGER_OFF)
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    assert track(collector.url)[0] == 200   # a request served: the sink and the app are all imported
    assert request(collector.url + "/debugger/api/events")[0] == 403   # the debugger's answer when off
    beam = [line.split()[-1] for line in open(f"/proc/{collector.pid}/maps") if "/apache_beam/" in line]
    assert not beam, f"the collector loaded Apache Beam: {sorted(set(beam))[:3]}"


def test_the_sluice_console_script_serves_without_apache_beam_too(start_collector, tmp_path):
    """`sluice serve`: the function setup.py's console script calls, called as pip's script does."""
    module, function = re.search(r'"sluice = ([\w.]+):(\w+)"', (ROOT / "setup.py").read_text()).groups()
    script = f"import sys; from {module} import {function}; sys.argv[0] = 'sluice'; sys.exit({function}())"
    config = write_config(tmp_path, debugger=DEBUGGER_OFF)
    collector = start_collector(["serve", "--config", str(config), "--sink", str(tmp_path / "spool")],
                                command=[sys.executable, "-c", script])
    assert track(collector.url)[0] == 200
    assert "/apache_beam/" not in open(f"/proc/{collector.pid}/maps").read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_exits_0_without_a_traceback(start_collector, tmp_path, sig):
    """A signal before the server listens: nothing is accepted yet, so a clean exit 0 (not death
    by the signal, nor SIGINT's KeyboardInterrupt). The start is held deterministically: the
    write key is a {file} secret on a named pipe, which the collector reads while starting and
    which has no writer until the test opens one; the signal comes while it waits in the read."""
    fifo = tmp_path / "write-key"
    os.mkfifo(fifo)
    config = write_config(tmp_path, sources=[{"name": "web", "write_key": {"file": str(fifo)}}])
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")], ready=False,
                                env={"PYTHONFAULTHANDLER": "1"})   # SIGABRT on a hang: its stacks in the log
    deadline = time.monotonic() + 60   # a hang guard: the collector's open of the pipe is what ends the wait
    while True:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # ENXIO until the collector opens it to read
            break
        except OSError:
            assert collector.process.poll() is None, collector.log()
            assert time.monotonic() < deadline, "the collector never read its write key"
            time.sleep(0.02)
    # The signal must find the collector in the read, not on its way there: one landing between
    # the open and the read is only noted by CPython (its handler runs at the next bytecode check)
    # and the read then blocks with it pending (2 runs in 14 hung here on a loaded machine).
    wchan = Path(f"/proc/{collector.pid}/wchan")   # pipe_read or anon_pipe_read, as kernels name it
    while "pipe_read" not in wchan.read_text():
        assert time.monotonic() < deadline, f"the collector never waited in the read ({wchan.read_text()})"
        time.sleep(0.01)
    try:
        collector.process.send_signal(sig)
        try:
            assert collector.process.wait(30) == 0, collector.log()
        except subprocess.TimeoutExpired:
            collector.process.send_signal(signal.SIGABRT)
            collector.process.wait(30)
            raise AssertionError(f"no exit within 30 s of {sig.name}:\n{collector.log()}") from None
    finally:
        os.close(writer)
    log = collector.log()
    assert f"{sig.name} received while starting" in log and "Traceback" not in log, log
    assert "listening" not in log and not list((tmp_path / "spool").glob("*")), log
