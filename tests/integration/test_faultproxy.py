"""FaultProxy against a real upstream (a tiny http.server), through one keep-alive requests.Session."""
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.integration.faultproxy import Fault, FaultProxy

BIG = bytes(range(256)) * 4096  # 1 MiB


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    count = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Upstream.lock:
            _Upstream.count += 1
            count = _Upstream.count
        if self.path == "/big":
            data, ctype = BIG, "application/octet-stream"
        else:
            data, ctype = json.dumps({
                "method": self.command, "path": self.path, "length": len(body), "count": count,
                "sha256": hashlib.sha256(body).hexdigest(), "client_port": self.client_address[1],
                "headers": {k.lower(): v for k, v in self.headers.items()}}).encode(), "application/json"
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Upstream", "yes")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Keep-Alive", "timeout=30")  # hop-by-hop: the proxy drops it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _handle


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def upstream_count(upstream):
    with requests.get(f"{upstream}/count", timeout=5) as resp:  # direct, not through the proxy
        return resp.json()["count"]


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:  # ONE keep-alive session for the whole file
        yield s


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream) as p:
        yield p


def get(session, proxy, path, **kw):
    return session.get(proxy.url + path, timeout=5, **kw)


def outcomes(proxy):
    return [outcome for _, _, outcome in proxy.requests]


def test_get_passes_status_headers_and_body_through(session, proxy):
    resp = get(session, proxy, "/hello?x=1", headers={"Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1",
                                                       "X-Keep-Me": "2"})
    assert resp.status_code == 200
    assert resp.headers["X-Upstream"] == "yes" and resp.headers["Content-Type"] == "application/json"
    assert resp.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert "Keep-Alive" not in resp.headers
    echo = resp.json()
    assert (echo["method"], echo["path"], echo["length"]) == ("GET", "/hello?x=1", 0)
    assert echo["headers"]["x-keep-me"] == "2" and "x-drop-me" not in echo["headers"]
    assert echo["headers"]["host"] == proxy.upstream_addr[0] + ":" + str(proxy.upstream_addr[1])
    big = get(session, proxy, "/big")
    assert big.status_code == 200 and big.content == BIG and big.headers["Content-Length"] == str(len(BIG))
    head = session.head(proxy.url + "/hello", timeout=5)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0
    assert outcomes(proxy) == ["forwarded"] * 3


def test_post_bodies_and_upstream_404_pass_through(session, proxy):
    resp = session.post(proxy.url + "/upload", data=BIG, timeout=5)
    assert resp.status_code == 200
    assert resp.json()["length"] == len(BIG) and resp.json()["sha256"] == hashlib.sha256(BIG).hexdigest()
    chunked = session.post(proxy.url + "/chunked", data=iter([b"abc", b"", b"defg", BIG]), timeout=5)
    assert chunked.json()["length"] == 7 + len(BIG)
    assert "transfer-encoding" not in chunked.json()["headers"]
    missing = session.post(proxy.url + "/missing", json={"a": 1}, timeout=5)
    assert missing.status_code == 404 and missing.json()["length"] == len(b'{"a": 1}')
    assert missing.headers["X-Upstream"] == "yes"
    ports = {r.json()["client_port"] for r in (resp, chunked, missing)}
    assert len(ports) == 1  # the proxy keeps its upstream connection alive too


def test_injected_503_then_success(session, proxy):
    proxy.inject(503)
    resp = get(session, proxy, "/x")
    assert resp.status_code == 503 and resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"error": {"code": 503, "message": "injected by FaultProxy", "status": "UNAVAILABLE",
                                     "errors": [{"reason": "backendError", "message": "injected"}]}}
    assert "Retry-After" not in resp.headers
    assert get(session, proxy, "/x").status_code == 200
    assert outcomes(proxy) == ["503", "forwarded"]


def test_429_with_retry_after_and_google_error_shapes(session, proxy):
    proxy.inject(Fault.status(429, retry_after=7), 500, 502, Fault.status(418, body="teapot"))
    resp = get(session, proxy, "/x")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert resp.json()["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    assert get(session, proxy, "/x").json()["error"]["errors"][0]["reason"] == "internalError"
    assert get(session, proxy, "/x").json()["error"]["errors"][0]["reason"] == "badGateway"
    teapot = get(session, proxy, "/x")
    assert teapot.status_code == 418 and teapot.text == "teapot"
    assert outcomes(proxy) == ["429", "500", "502", "418"]


def test_reset_raises_connection_error_and_the_session_recovers(session, proxy, upstream):
    before = upstream_count(upstream)
    get(session, proxy, "/warm")  # so the reset hits a kept-alive connection
    proxy.inject(Fault.reset())
    with pytest.raises(requests.exceptions.ConnectionError, match="reset by peer"):
        session.post(proxy.url + "/x", data=b"payload", timeout=5)
    assert upstream_count(upstream) == before + 2  # /warm and the count itself; /x never arrived
    assert get(session, proxy, "/x").status_code == 200
    assert outcomes(proxy) == ["forwarded", "reset", "forwarded"]


def test_after_forward_reset_lands_upstream_but_client_gets_an_error(session, proxy, upstream):
    before = upstream_count(upstream)
    proxy.inject(Fault.after_forward_reset())
    with pytest.raises(requests.exceptions.ConnectionError, match="reset by peer"):
        session.post(proxy.url + "/insert", data=b"row", timeout=5)
    assert upstream_count(upstream) == before + 2  # the POST landed (then the count itself)
    assert proxy.requests == [("POST", "/insert", "after_forward_reset")]


def test_match_only_affects_matching_requests(session, proxy):
    proxy.inject(503, 503, match=lambda method, path: method == "POST" and path.startswith("/insertAll"))
    assert get(session, proxy, "/insertAll").status_code == 200
    assert session.post(proxy.url + "/other", data=b"", timeout=5).status_code == 200
    assert session.post(proxy.url + "/insertAll?x=1", data=b"", timeout=5).status_code == 503
    proxy.inject(Fault.status(500))  # unmatched faults wait behind the matched queue, in order
    assert get(session, proxy, "/any").status_code == 500
    assert session.post(proxy.url + "/insertAll", data=b"", timeout=5).status_code == 503
    assert session.post(proxy.url + "/insertAll", data=b"", timeout=5).status_code == 200
    assert outcomes(proxy) == ["forwarded", "forwarded", "503", "500", "503", "forwarded"]


def test_fail_for_fails_for_about_that_long_then_passes(session, proxy):
    start = time.monotonic()
    proxy.fail_for(0.5, 503)
    statuses = []
    while not statuses or statuses[-1] != 200:
        statuses.append(get(session, proxy, "/x").status_code)
        assert time.monotonic() - start < 3
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 1.5
    assert len(statuses) > 5 and set(statuses[:-1]) == {503}
    assert get(session, proxy, "/x").status_code == 200


def test_fail_for_cycles_faults_and_respects_match(session, proxy):
    proxy.fail_for(5, 503, Fault.status(429, retry_after=1), match=lambda m, p: p == "/flaky")
    assert [get(session, proxy, "/flaky").status_code for _ in range(3)] == [503, 429, 503]
    assert get(session, proxy, "/steady").status_code == 200
    proxy.clear()
    assert get(session, proxy, "/flaky").status_code == 200
    assert proxy.requests == [("GET", "/flaky", "forwarded")]


def test_delay_then_forward(session, proxy):
    proxy.inject(Fault.delay(0.3))
    start = time.monotonic()
    assert get(session, proxy, "/slow").json()["path"] == "/slow"
    assert time.monotonic() - start >= 0.3
    assert outcomes(proxy) == ["delay"]


def test_stop_frees_the_port(session, upstream):
    proxy = FaultProxy(upstream).start()
    port = int(proxy.url.rsplit(":", 1)[1])
    assert get(session, proxy, "/x").status_code == 200  # leaves a kept-alive connection open
    proxy.stop()
    assert not proxy._thread.is_alive()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(proxy.url + "/x", timeout=5)
    with socket.socket() as sock:  # no SO_REUSEADDR: nothing may hold the port at all
        sock.bind(("127.0.0.1", port))
    proxy.stop()  # idempotent


def test_upstream_down_gives_502_and_is_logged(session):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # bound, not listening: connections are refused
        with FaultProxy(f"http://127.0.0.1:{dead}") as proxy:
            resp = get(session, proxy, "/x")
    assert resp.status_code == 502 and "upstream failed" in resp.text
    assert proxy.requests == [("GET", "/x", "upstream_error")]


def test_refuses_remote_upstreams():
    for bad in ("http://example.com:80", "http://10.0.0.1:9050", "https://127.0.0.1:9050", "http://127.0.0.1"):
        with pytest.raises(ValueError):
            FaultProxy(bad)
    FaultProxy("http://localhost:9050")  # allowed (not started)
