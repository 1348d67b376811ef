"""The debugger's live streams under pages that stop reading: a real collector (`serve --sink`,
its own process) with MAX_STREAMS streams open whose clients never read, sent events of 15 KB.
Each stream's backlog is bounded in bytes (collector.debugger.api.STREAM_QUEUE_BYTES) and every
message is serialised once for all streams, so the collector's resident memory stays under a
bound derived from the configured limits; a stream that fell behind is told `lagged`."""
import http.client
import json
import socket
import time

import pytest

from collector.debugger.api import MAX_STREAMS, STREAM_QUEUE_BYTES
from tests.collector.serving import SOURCES, basic, request, write_config

pytestmark = pytest.mark.slow

LIMITS = {"max_events_per_source": 500, "max_events_per_second": 1_000_000, "max_payload_bytes": 16 * 1024}
EVENTS, PER_REQUEST, PAD = 2000, 20, 15_000
ENTRY_FIXED_BYTES = 3072          # an entry besides its payload (1.4 KB measured, doubled: test_debugger_memory)
WORKING_BYTES = 16 * 1024 * 1024  # requests in flight, the transports' paused buffers, the allocator's slack
HANG_GUARD_SECONDS = 120


def open_stream(host: str, port: int) -> socket.socket:
    """A page that asks for the stream, reads its headers, then never reads again (a small
    receive buffer, so the kernel holds little of what the collector sends it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, port))
    sock.sendall(f"GET /debugger/stream HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"event: hello" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_streams_that_do_not_read_hold_a_bounded_backlog(start_collector, tmp_path):
    config = write_config(tmp_path, debugger=LIMITS)
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    host, port = collector.url[len("http://"):].split(":")
    port = int(port)
    auth = {"Authorization": basic("key-server"), "Content-Type": "application/json"}

    def body(first: int) -> bytes:
        return json.dumps({"batch": [{"type": "track", "event": "Big", "userId": "u", "messageId": f"big-{n}",
                                      "properties": {"pad": "x" * PAD}} for n in range(first, first + PER_REQUEST)]
                           }).encode()

    connection = http.client.HTTPConnection(host, port, timeout=30)

    def post(first: int) -> None:
        connection.request("POST", "/v1/batch", body(first), auth)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200

    post(-PER_REQUEST)   # warm: inspection and the API once, then the baseline with the store empty
    assert request(collector.url + "/debugger/api/events?limit=100")[0] == 200
    assert request(collector.url + "/debugger/api/reset", "POST", b"")[0] == 200
    baseline_kb = collector.status_kb("VmRSS")

    streams = [open_stream(host, port) for _ in range(MAX_STREAMS)]
    rss_kb = []
    for first in range(0, EVENTS, PER_REQUEST):
        post(first)
        rss_kb.append(collector.status_kb("VmRSS"))
    deadline = time.monotonic() + HANG_GUARD_SECONDS   # the inspection runs after each answer: wait for the last
    while True:
        newest = json.loads(request(collector.url + "/debugger/api/events?limit=1")[2])["events"]
        if newest and newest[0]["message_id"] == f"big-{EVENTS - 1}":
            break
        assert time.monotonic() < deadline, "the debugger did not inspect the last event"
        time.sleep(0.1)
    rss_kb.append(collector.status_kb("VmRSS"))
    peak_kb = collector.status_kb("VmHWM")

    rings = (len(SOURCES) + 1) * LIMITS["max_events_per_source"] * (LIMITS["max_payload_bytes"] + ENTRY_FIXED_BYTES)
    bound_kb = baseline_kb + (rings + MAX_STREAMS * STREAM_QUEUE_BYTES + WORKING_BYTES) // 1024
    print(f"baseline {baseline_kb / 1024:.1f} MB, at most {max(rss_kb) / 1024:.1f} MB during, VmHWM "
          f"{peak_kb / 1024:.1f} MB, bound {bound_kb / 1024:.1f} MB")
    assert max(rss_kb) < bound_kb and peak_kb < bound_kb

    # a page reading again is told it fell behind (what it missed is in the API)
    sock, seen = streams[0], b""
    while b"event: lagged" not in seen:
        chunk = sock.recv(1 << 20)
        assert chunk, "the stream ended without saying it lagged"
        seen = seen[-64:] + chunk
    for sock in streams:
        sock.close()
