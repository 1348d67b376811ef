"""Senders: one attempt at delivering a batch, as a delivery.Outcome.

WebhookSender posts `{"batch": [payload, ...]}` (or, with `body: event`, the one payload) as
JSON over a kept-alive connection to the
address netguard checked, signed when the destination has a signing secret, with an
`Idempotency-Key` that is the same on every retry of a batch (a receiver can drop a retry
whose first answer was lost). PubSubSender publishes one message per payload and, on a retry,
only the messages not yet published.

A webhook's attempt cannot be held by its receiver: the whole of it (connecting, TLS, sending,
the answer's headers and body, redirects) ends by one deadline, `timeout_seconds` after it
began, however slowly the receiver drips its bytes; and it reads at most MAX_ANSWER_BYTES of
an answer's body, closing the connection rather than draining the rest.
"""
import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin

from transforms import __version__
from transforms.destinations import netguard, secrets, signing
from transforms.destinations.delivery import Outcome, classify, parse_retry_after

MAX_REDIRECTS = 3
_FOLLOWED = (307, 308)  # they keep the method and body; 301/302/303 would turn a POST into a GET
# How much of an answer's body is read: enough for the error message's 200 characters after
# redaction, with room for an echoed secret to be recognised whole. The rest is never read
# (the connection is closed instead), so a 500 MB answer costs 64 KiB.
MAX_ANSWER_BYTES = 64 * 1024
SNIPPET_CHARS = 200


class _Deadline:
    """Every blocking socket call first sets the socket's timeout to what is left until
    `deadline` (time.monotonic()), so a receiver sending a byte a second cannot stretch a
    request past it: a per-call timeout alone is restarted by every byte. `deadline` is set
    before each request (a kept-alive socket serves many)."""
    deadline = float("inf")

    def _arm(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self.settimeout(left)

    def recv(self, *args, **kwargs):
        self._arm()
        return super().recv(*args, **kwargs)

    def recv_into(self, *args, **kwargs):  # what http.client's reader calls
        self._arm()
        return super().recv_into(*args, **kwargs)

    def send(self, *args, **kwargs):  # SSLSocket.sendall calls this once per TLS record
        self._arm()
        return super().send(*args, **kwargs)

    def sendall(self, *args, **kwargs):  # a plain socket's sendall is one call, bounded as a whole
        self._arm()
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    pass


def _tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, hostname checked; its sockets keep the deadline."""
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def _socket(address: str, port: int, deadline: float) -> socket.socket:
    """A connected socket bound by `deadline`. http.client sends headers and body in two
    writes; without TCP_NODELAY the body waits for the receiver's delayed ACK (measured: 40 ms
    per request on a kept-alive connection)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = _DeadlineSocket(family, socket.SOCK_STREAM)
    try:
        sock.deadline = deadline
        sock._arm()
        sock.connect((address, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header stays the URL's host. `deadline` is
    set before each request: the connection's socket is held to it."""
    deadline = float("inf")

    def __init__(self, target: netguard.Target):
        super().__init__(target.host, target.port)
        self._address = target.address

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline

    def connect(self):
        self.sock = _socket(self._address, self.port, self.deadline)


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    def __init__(self, target: netguard.Target):
        http.client.HTTPSConnection.__init__(self, target.host, target.port, context=_tls_context())
        self._address = target.address

    def connect(self):
        sock = _socket(self._address, self.port, self.deadline)
        sock._arm()  # the handshake is one call, bounded by the timeout it starts with
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self.sock.deadline = self.deadline


def _connection(target: netguard.Target):
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return cls(target)


def batch_body(payloads: list) -> bytes:
    """The request body: the mapped payloads, already JSON, joined without re-parsing."""
    return b'{"batch":[' + b",".join(payloads) + b"]}"


class WebhookSender:
    def __init__(self, destination):
        self._destination = destination
        self._headers, self._secret_values, self._signing_secret = {}, [], None
        self._secret_headers = set()  # names of headers holding secrets: sent to the URL's origin only
        self._origin = netguard.split_url(destination.url)[:3]  # scheme, host, port
        self._conn, self._target = None, None

    def open(self) -> "WebhookSender":
        d = self._destination
        for name, value in d.headers:
            if isinstance(value, secrets.SecretRef):
                resolved = secrets.resolve(value)
                self._secret_values += [resolved, resolved[len(value.prefix):]]
                self._secret_headers.add(name)
                value = resolved
            self._headers[name] = value
        if d.signing_secret:
            self._signing_secret = secrets.resolve(d.signing_secret)
            self._secret_values.append(self._signing_secret)
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def attempt(self, payloads: list, idempotency_key: str):
        """A zero-argument callable making one attempt at the whole batch."""
        body = payloads[0] if self._destination.body == "event" else batch_body(payloads)
        return lambda: self._send(body, idempotency_key)

    def _request_headers(self, body: bytes, key: str, same_origin: bool) -> dict:
        headers = {"Content-Type": "application/json", "User-Agent": f"sluice/{__version__}",
                   "Idempotency-Key": key}
        headers.update((k, v) for k, v in self._headers.items() if same_origin or k not in self._secret_headers)
        if self._signing_secret:
            headers[signing.HEADER] = signing.sign(self._signing_secret, body)
        return headers

    def _timed_out(self) -> Outcome:
        return Outcome(False, None, True, f"no answer within timeout_seconds ({self._destination.timeout_seconds:g})")

    def _send(self, body: bytes, key: str) -> Outcome:
        """One attempt, redirects included, over by `timeout_seconds` from now."""
        url, d = self._destination.url, self._destination
        deadline = time.monotonic() + d.timeout_seconds
        encrypted = False  # whether an earlier hop was https: a later one must be too
        for hop in range(MAX_REDIRECTS + 1):
            try:
                scheme, host, port, _ = netguard.split_url(url)
                if encrypted and scheme != "https":
                    return Outcome(False, outcome.status, False,
                                   f"refused: HTTP {outcome.status} redirect from https to {scheme}://{host}:{port} "
                                   "(it would send the body, headers and signature unencrypted)")
                target = netguard.resolve(url, d.allow_private_network)
            except (ValueError, netguard.NetworkRefused) as exc:
                return Outcome(False, None, False, f"refused: {exc}")
            if time.monotonic() >= deadline:  # the name took the time (getaddrinfo cannot be cut short)
                return self._timed_out()
            encrypted = encrypted or scheme == "https"
            same_origin = (target.scheme, target.host, target.port) == self._origin
            outcome, location = self._exchange(target, body, key, same_origin, hop == 0, deadline)
            if location is None:
                return outcome
            url = location
        return Outcome(False, outcome.status, False, f"more than {MAX_REDIRECTS} redirects")

    def _exchange(self, target, body: bytes, key: str, same_origin: bool, persistent: bool, deadline: float) -> tuple:
        """(Outcome, redirect location or None)."""
        if persistent and (self._conn is None or self._target != target):
            self.close()
            self._conn, self._target = _connection(target), target
        conn = self._conn if persistent else _connection(target)
        conn.set_deadline(deadline)
        try:
            conn.request(self._destination.method, target.path, body, self._request_headers(body, key, same_origin))
            response = conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            self._drop(conn, persistent)
            return Outcome(False, None, False, f"TLS certificate refused: {exc.verify_message}"), None
        except TimeoutError:
            self._drop(conn, persistent)
            return self._timed_out(), None
        except (OSError, http.client.HTTPException) as exc:  # resets, refusals: transient
            self._drop(conn, persistent)
            return Outcome(False, None, True, f"no answer: {type(exc).__name__}: {exc}"), None
        answer, whole = _read_answer(response)
        if not (persistent and whole):  # a connection with an answer left unread cannot take another request
            self._drop(conn, persistent)
        status = response.status
        if 200 <= status < 300:
            return Outcome(True, status, False, f"HTTP {status}"), None
        if status in _FOLLOWED and response.getheader("Location"):
            return Outcome(False, status, False, f"HTTP {status} redirect"), urljoin(
                f"{target.scheme}://{target.host}:{target.port}{target.path}", response.getheader("Location"))
        if 300 <= status < 400:
            return Outcome(False, status, False, f"HTTP {status} redirect not followed (only 307 and 308 are)"), None
        snippet = secrets.excerpt(answer.decode("utf-8", "replace"), self._secret_values, SNIPPET_CHARS,
                                  cut_short=not whole)
        reason = secrets.excerpt(response.reason or "", self._secret_values, SNIPPET_CHARS)  # the server's words too
        detail = " ".join(filter(None, ["HTTP", str(status), reason])) + (f": {snippet}" if snippet else "")
        return Outcome(False, status, classify(status), detail, parse_retry_after(response.getheader("Retry-After"))), None

    def _drop(self, conn, persistent: bool) -> None:
        conn.close()
        if persistent:
            self._conn, self._target = None, None


def _read_answer(response) -> tuple:
    """(the body's first MAX_ANSWER_BYTES, whether that was all of it). The status has come,
    so a body that fails or passes the deadline half-way is kept as far as it got: what the
    receiver said is its status."""
    try:
        answer = response.read(MAX_ANSWER_BYTES)
    except http.client.IncompleteRead as exc:
        return exc.partial, False
    except (OSError, http.client.HTTPException):
        return b"", False
    return answer, response.isclosed()


class PubSubSender:
    def __init__(self, destination):
        self._destination = destination
        self._client = None

    def open(self) -> "PubSubSender":
        from google.cloud import pubsub_v1
        self._client = pubsub_v1.PublisherClient()
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client = None

    def attempt(self, payloads: list, idempotency_key: str):
        pending = dict(enumerate(payloads))
        topic, name = self._destination.topic, self._destination.name

        def send() -> Outcome:
            futures = {i: self._client.publish(topic, data, destination=name, batch=idempotency_key)
                       for i, data in pending.items()}
            errors = []
            for i, future in futures.items():
                try:
                    future.result(timeout=self._destination.retry.max_age_seconds)
                    del pending[i]
                except Exception as exc:  # noqa: BLE001 - every publish failure is retried, then dead-lettered
                    errors.append(f"{type(exc).__name__}: {exc}")
            if not errors:
                return Outcome(True, None, False, "published")
            return Outcome(False, None, True, f"{len(errors)} of {len(futures)} publishes failed: {errors[0]}")
        return send


def open_sender(destination):
    cls = WebhookSender if destination.kind == "webhook" else PubSubSender
    return cls(destination).open()

