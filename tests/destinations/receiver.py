"""A real HTTP server on 127.0.0.1 that receives webhook batches, answering from a script:
the first requests get the scripted statuses (with headers such as Retry-After), the rest 200;
or 503 to everything for a while (an outage)."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple


RESET = 0  # a scripted "status" for a connection dropped without an answer


class Request(NamedTuple):
    at: float
    path: str
    headers: dict
    body: bytes
    status: int
    client_port: int  # one port for many requests: the connection was kept alive


class Receiver:
    def __init__(self, script=(), default_status: int = 200, echo_authorization: bool = False,
                 unavailable_seconds: float = 0.0):
        self.script = list(script)       # [(status, {header: value}), ...] for the first requests
        self.default_status = default_status
        self.unavailable_seconds = unavailable_seconds  # 503 to everything for this long after the first request
        self.first_request_at = None
        self.requests: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
            disable_nagle_algorithm = True  # else each answer waits on the client's delayed ACK (40 ms)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (receiver.default_status, {})
                    now = time.monotonic()
                    receiver.first_request_at = receiver.first_request_at or now
                    if now - receiver.first_request_at < receiver.unavailable_seconds:
                        status, headers = 503, {}
                    receiver.requests.append(Request(time.monotonic(), self.path, dict(self.headers), body, status,
                                                     self.client_address[1]))
                if status == RESET:  # read it, answer nothing, drop the connection
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                answer = {"ok": True} if status < 300 else {"error": "scripted"}
                if echo_authorization and status >= 300:  # as careless servers do
                    answer["authorization"] = self.headers.get("Authorization")
                answer = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list:
        """Requests answered 2xx (a RESET request is not: it got no answer)."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_payloads(self) -> list:
        return [p for r in self.accepted() for p in json.loads(r.body)["batch"]]
