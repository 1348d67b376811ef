"""A real HTTP server on 127.0.0.1 that receives webhook batches, answering from a script:
the first requests get the scripted statuses (with headers such as Retry-After), the rest 200;
or 503 to everything for a while (an outage). It can also misbehave as hostile or broken
receivers do: answer a huge body (`answer_bytes`), or drip its answer a byte at a time
(`drip_seconds` between bytes)."""
import json
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple


RESET = 0  # a scripted "status" for a connection dropped without an answer
_FILLER = b"x" * 65536  # a huge answer is this, written again and again: the server itself stays small


class Request(NamedTuple):
    at: float
    path: str
    headers: dict
    body: bytes
    status: int
    client_port: int  # one port for many requests: the connection was kept alive


class Receiver:
    def __init__(self, script=(), default_status: int = 200, echo_authorization: bool = False,
                 unavailable_seconds: float = 0.0, echo_after: int = 0, answer_bytes: int = 0,
                 drip_seconds: float = 0.0, drip_body_only: bool = False, tls=None):
        self.script = list(script)       # [(status, {header: value}), ...] for the first requests
        self.default_status = default_status
        self.unavailable_seconds = unavailable_seconds  # 503 to everything for this long after the first request
        self.first_request_at = None
        self.requests: list = []
        self.echo_after = echo_after      # with echo_authorization: the echo starts about this many characters in
        self.answer_bytes = answer_bytes  # > 0: every answer's body is this many bytes of filler
        self.drip_seconds = drip_seconds  # > 0: the answer goes out one byte at a time, this far apart
        self.drip_body_only = drip_body_only  # the status and headers at once, then the body drips
        self.answered_bytes = 0           # body bytes of huge answers the client took (or the kernel buffered)
        self.lock = threading.Lock()
        self._closing = threading.Event()  # stops a dripping or huge answer when the test is over
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
                    if receiver.echo_after:  # pad the answer so that the echo starts this far in
                        answer["padding"] = "p" * max(0, receiver.echo_after - len('{"error": "scripted", "padding": '
                                                                                 '"", "authorization": "'))
                    answer["authorization"] = self.headers.get("Authorization")
                answer = json.dumps(answer).encode()
                try:
                    if receiver.answer_bytes:
                        self._answer_huge(status, headers)
                    elif receiver.drip_seconds:
                        self._drip(status, headers, answer)
                    else:
                        self._answer(status, headers, answer)
                except OSError:  # the client hung up on a huge or dripping answer, as it should
                    self.close_connection = True

            def _answer(self, status, headers, answer):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _answer_huge(self, status, headers):
                self._answer(status, {**headers, "Content-Length": str(receiver.answer_bytes)}, b"")
                left = receiver.answer_bytes
                while left and not receiver._closing.is_set():
                    chunk = _FILLER[:left]
                    self.wfile.write(chunk)
                    left -= len(chunk)
                    with receiver.lock:
                        receiver.answered_bytes += len(chunk)

            def _drip(self, status, headers, answer):
                head = [f"HTTP/1.1 {status} Dripping"] + [f"{k}: {v}" for k, v in headers.items()]
                whole = ("\r\n".join(head + [f"Content-Length: {len(answer)}"]) + "\r\n\r\n").encode() + answer
                if receiver.drip_body_only:
                    self.wfile.write(whole[:-len(answer)])
                for i in range(len(whole) - len(answer) if receiver.drip_body_only else 0, len(whole)):
                    if receiver._closing.wait(receiver.drip_seconds):
                        return
                    self.wfile.write(whole[i:i + 1])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:  # (certificate file, key file): answer over TLS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list:
        """Requests answered 2xx (a RESET request is not: it got no answer)."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_payloads(self) -> list:
        return [p for r in self.accepted() for p in json.loads(r.body)["batch"]]


def self_signed_certificate(directory) -> tuple:
    """(certificate file, key file) for 127.0.0.1, valid for a day: a client trusts it by
    taking the certificate file as its CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_file, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_file, key_file
