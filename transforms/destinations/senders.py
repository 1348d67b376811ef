"""Senders: one attempt at delivering a batch, as a delivery.Outcome.

WebhookSender posts `{"batch": [payload, ...]}` (or, with `body: event`, the one payload) as
JSON over a kept-alive connection to the
address netguard checked, signed when the destination has a signing secret, with an
`Idempotency-Key` that is the same on every retry of a batch (a receiver can drop a retry
whose first answer was lost). PubSubSender publishes one message per payload and, on a retry,
only the messages not yet published.
"""
import http.client
import socket
import ssl

from transforms import __version__
from transforms.destinations import netguard, secrets, signing
from transforms.destinations.delivery import Outcome, classify, parse_retry_after

MAX_REDIRECTS = 3
_FOLLOWED = (307, 308)  # they keep the method and body; 301/302/303 would turn a POST into a GET


def _socket(address: str, port: int, timeout: float) -> socket.socket:
    """http.client sends headers and body in two writes; without TCP_NODELAY the body waits for
    the receiver's delayed ACK (measured: 40 ms per request on a kept-alive connection)."""
    sock = socket.create_connection((address, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header stays the URL's host."""

    def __init__(self, target: netguard.Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self):
        self.sock = _socket(self._address, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: netguard.Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self):
        sock = _socket(self._address, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _connection(target: netguard.Target, timeout: float):
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return cls(target, timeout)


def batch_body(payloads: list) -> bytes:
    """The request body: the mapped payloads, already JSON, joined without re-parsing."""
    return b'{"batch":[' + b",".join(payloads) + b"]}"


class WebhookSender:
    def __init__(self, destination):
        self._destination = destination
        self._headers, self._secret_values, self._signing_secret = {}, [], None
        self._secret_headers = set()  # names of headers holding secrets: not sent to another host
        self._host = netguard.split_url(destination.url)[1]
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

    def _request_headers(self, body: bytes, key: str, same_host: bool) -> dict:
        headers = {"Content-Type": "application/json", "User-Agent": f"sluice/{__version__}",
                   "Idempotency-Key": key}
        headers.update((k, v) for k, v in self._headers.items() if same_host or k not in self._secret_headers)
        if self._signing_secret:
            headers[signing.HEADER] = signing.sign(self._signing_secret, body)
        return headers

    def _send(self, body: bytes, key: str) -> Outcome:
        url, d = self._destination.url, self._destination
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = netguard.resolve(url, d.allow_private_network)
            except (ValueError, netguard.NetworkRefused) as exc:
                return Outcome(False, None, False, f"refused: {exc}")
            same_host = target.host == self._host
            outcome, location = self._exchange(target, body, key, same_host, persistent=hop == 0)
            if location is None:
                return outcome
            url = location
        return Outcome(False, outcome.status, False, f"more than {MAX_REDIRECTS} redirects")

    def _exchange(self, target, body: bytes, key: str, same_host: bool, persistent: bool) -> tuple:
        """(Outcome, redirect location or None)."""
        if persistent and (self._conn is None or self._target != target):
            self.close()
            self._conn, self._target = _connection(target, self._destination.timeout_seconds), target
        conn = self._conn if persistent else _connection(target, self._destination.timeout_seconds)
        try:
            conn.request(self._destination.method, target.path, body, self._request_headers(body, key, same_host))
            response = conn.getresponse()
            answer = response.read(2048)
            if not response.isclosed():
                response.read()  # drain, so the connection can be kept
        except ssl.SSLCertVerificationError as exc:
            self._drop(conn, persistent)
            return Outcome(False, None, False, f"TLS certificate refused: {exc.verify_message}"), None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, refusals: transient
            self._drop(conn, persistent)
            return Outcome(False, None, True, f"no answer: {type(exc).__name__}: {exc}"), None
        if not persistent:
            conn.close()
        status = response.status
        if 200 <= status < 300:
            return Outcome(True, status, False, f"HTTP {status}"), None
        if status in _FOLLOWED and response.getheader("Location"):
            from urllib.parse import urljoin
            return Outcome(False, status, False, f"HTTP {status} redirect"), urljoin(
                f"{target.scheme}://{target.host}:{target.port}{target.path}", response.getheader("Location"))
        if 300 <= status < 400:
            return Outcome(False, status, False, f"HTTP {status} redirect not followed (only 307 and 308 are)"), None
        snippet = " ".join(answer.decode("utf-8", "replace").split())[:200]
        detail = secrets.redact(f"HTTP {status} {response.reason}" + (f": {snippet}" if snippet else ""),
                                self._secret_values)
        return Outcome(False, status, classify(status), detail, parse_retry_after(response.getheader("Retry-After"))), None

    def _drop(self, conn, persistent: bool) -> None:
        conn.close()
        if persistent:
            self._conn, self._target = None, None


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

