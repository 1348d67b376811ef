"""The webhook sender against real HTTP servers on 127.0.0.1: redirects, the guard on
redirects, keep-alive, secrets kept out of what a failure says, and receivers that try to hold
a request or flood it."""
import json
import socket
import time
import tracemalloc

import pytest

from tests.destinations.receiver import Receiver, self_signed_certificate
from transforms.destinations import netguard, senders
from transforms.destinations.model import Destination
from transforms.destinations.secrets import SecretRef


def sender(url, **settings) -> senders.WebhookSender:
    return senders.WebhookSender(Destination("crm", "webhook", url, allow_private_network=True, **settings)).open()


def test_a_307_is_followed_with_the_same_method_and_body():
    with Receiver() as final, Receiver([(307, {"Location": final.url + "?moved=1"})]) as first:
        outcome = sender(first.url).attempt([b'{"a":1}'], "key-1")()
    assert outcome.ok and outcome.status == 200
    [moved] = final.requests
    assert moved.path == "/hook?moved=1" and json.loads(moved.body) == {"batch": [{"a": 1}]}
    assert moved.headers["Idempotency-Key"] == "key-1"


def test_a_302_is_not_followed_and_is_permanent():
    with Receiver([(302, {"Location": "http://127.0.0.1:9/elsewhere"})]) as first:
        outcome = sender(first.url).attempt([b"{}"], "k")()
    assert not outcome.ok and not outcome.transient and "redirect not followed" in outcome.detail


def test_a_redirect_to_a_private_address_is_refused(monkeypatch):
    """The first hop poses as a public host (a wrapper around the real resolver, since every
    test server is on 127.0.0.1); its redirect to 127.0.0.1 meets the real guard."""
    real = netguard.resolve

    def resolve(url, allow_private, **kwargs):
        if "public.test" in url:
            return real(url.replace("public.test", "127.0.0.1"), True)._replace(host="public.test")
        return real(url, allow_private, **kwargs)
    monkeypatch.setattr(senders.netguard, "resolve", resolve)
    with Receiver() as private, Receiver([(307, {"Location": private.url})]) as first:
        url = first.url.replace("127.0.0.1", "public.test")
        destination = Destination("crm", "webhook", url, allow_private_network=False)
        outcome = senders.WebhookSender(destination).open().attempt([b"{}"], "k")()
    assert not outcome.ok and not outcome.transient
    assert "refused" in outcome.detail and "127.0.0.1, a private" in outcome.detail
    assert private.requests == [] and len(first.requests) == 1


def test_requests_reuse_one_connection():
    with Receiver() as receiver:
        webhook = sender(receiver.url)
        for i in range(5):
            assert webhook.attempt([b"{}"], f"k{i}")().ok
    assert len(receiver.requests) == 5 and len({request.client_port for request in receiver.requests}) == 1


def test_an_answer_echoing_the_token_is_redacted(monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "tok-echoed-123")
    with Receiver([(401, {})], echo_authorization=True) as receiver:
        webhook = sender(receiver.url, headers=(("Authorization", SecretRef(env="SLUICE_TEST_TOKEN",
                                                                            prefix="Bearer ")),))
        outcome = webhook.attempt([b"{}"], "k")()
    assert receiver.requests[0].headers["Authorization"] == "Bearer tok-echoed-123"
    assert outcome.status == 401 and not outcome.transient and "scripted" in outcome.detail
    assert "tok-echoed-123" not in outcome.detail and "[redacted]" in outcome.detail


def test_no_answer_is_transient():
    webhook = sender("http://127.0.0.1:9/closed", timeout_seconds=2)  # port 9 (discard) is closed here
    outcome = webhook.attempt([b"{}"], "k")()
    assert not outcome.ok and outcome.transient and outcome.status is None and "no answer" in outcome.detail


def test_a_200_whose_body_drips_is_delivered_at_the_deadline():
    """The status is what the receiver said; a body still dripping at the deadline is left, and
    so is the connection (the next request opens another)."""
    with Receiver(drip_seconds=0.5, drip_body_only=True) as receiver:
        webhook = sender(receiver.url, timeout_seconds=1)
        began = time.monotonic()
        outcome = webhook.attempt([b"{}"], "k1")()
        held = time.monotonic() - began
        receiver.drip_seconds = 0.0  # answer the next one at once
        assert webhook.attempt([b"{}"], "k2")().ok
    assert outcome.ok and outcome.status == 200 and 0.9 < held < 1.5, (outcome, held)
    assert receiver.requests[0].client_port != receiver.requests[1].client_port


def test_a_receiver_that_never_answers_the_tls_handshake_is_cut_off_at_the_deadline():
    """The kernel accepts the connection into the backlog; nobody ever speaks TLS on it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        webhook = sender(f"https://127.0.0.1:{silent.getsockname()[1]}/hook", timeout_seconds=1)
        began = time.monotonic()
        outcome = webhook.attempt([b"{}"], "k")()
        held = time.monotonic() - began
    assert 0.9 < held < 1.5, held
    assert outcome.transient and outcome.detail == "no answer within timeout_seconds (1)"


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A certificate for 127.0.0.1 that the sender trusts besides the system's CAs (the real
    context, one more CA loaded)."""
    cert_file, key_file = self_signed_certificate(tmp_path)
    real = senders._tls_context

    def context():
        trusting = real()
        trusting.load_verify_locations(cert_file)
        return trusting
    monkeypatch.setattr(senders, "_tls_context", context)
    return cert_file, key_file


def test_a_redirect_from_https_to_http_is_refused(tls, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "tok-clear-text")
    with Receiver() as plain, Receiver([(307, {"Location": plain.url})], tls=tls) as secure:
        assert secure.url.startswith("https://")
        webhook = sender(secure.url, headers=(("Authorization", SecretRef(env="SLUICE_TEST_TOKEN")),),
                         signing_secret=SecretRef(env="SLUICE_TEST_TOKEN"))
        outcome = webhook.attempt([b'{"a":1}'], "k")()
    assert len(secure.requests) == 1 and secure.requests[0].headers["Authorization"] == "tok-clear-text"
    assert plain.requests == []  # nothing went out in clear text
    assert not outcome.ok and not outcome.transient and outcome.status == 307
    assert "redirect from https to http://127.0.0.1" in outcome.detail


def test_an_https_redirect_keeps_the_token_only_on_the_same_scheme_host_and_port(tls, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "tok-same-origin")
    with Receiver(tls=tls) as other_port, Receiver([(307, {"Location": "/hook?again=1"}),
                                                    (308, {"Location": other_port.url})], tls=tls) as origin:
        webhook = sender(origin.url, headers=(("Authorization", SecretRef(env="SLUICE_TEST_TOKEN")),
                                              ("X-Team", "growth")))
        outcome = webhook.attempt([b"{}"], "k")()
    assert outcome.ok
    first, again = origin.requests
    assert first.headers["Authorization"] == again.headers["Authorization"] == "tok-same-origin"
    [moved] = other_port.requests  # same scheme and host, another port: another server
    assert "Authorization" not in moved.headers and moved.headers["X-Team"] == "growth"


def test_a_huge_answer_is_read_only_up_to_the_bound(monkeypatch):
    """64 MiB answered; the sender holds no more than its bound of it, then hangs up rather
    than draining the rest (the next request gets a new connection)."""
    with Receiver(answer_bytes=64 * 2**20) as receiver:
        webhook = sender(receiver.url)
        tracemalloc.start()
        try:
            outcome = webhook.attempt([b"{}"], "k1")()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        again = webhook.attempt([b"{}"], "k2")()
    assert outcome.ok and again.ok
    assert peak < 1 * 2**20, f"{peak} bytes at the peak"
    assert receiver.requests[0].client_port != receiver.requests[1].client_port


def test_a_huge_error_answer_still_says_what_went_wrong():
    with Receiver([(500, {})], answer_bytes=8 * 2**20) as receiver:
        outcome = sender(receiver.url).attempt([b"{}"], "k")()
    assert outcome.status == 500 and outcome.transient
    assert outcome.detail == "HTTP 500 Internal Server Error: " + "x" * senders.SNIPPET_CHARS


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_a_dripping_receiver_cannot_hold_a_request_past_its_timeout(request, secure):
    """The answer comes a byte every 0.1 s (6 s in all); each byte would restart a per-read
    timeout, so only a deadline for the whole request ends it at timeout_seconds."""
    with Receiver(drip_seconds=0.1, tls=request.getfixturevalue("tls") if secure else None) as receiver:
        webhook = sender(receiver.url, timeout_seconds=1)
        began = time.monotonic()
        outcome = webhook.attempt([b"{}"], "k")()
        held = time.monotonic() - began
    assert 0.9 < held < 1.5, held
    assert not outcome.ok and outcome.transient and outcome.detail == "no answer within timeout_seconds (1)"


def test_an_echoed_token_is_redacted_wherever_the_answer_is_cut(monkeypatch):
    """The message keeps 200 characters of the answer; an echo straddling that cut, wherever
    it starts, must not leave the token's first characters behind."""
    token = "tok-echoed-123456"
    monkeypatch.setenv("SLUICE_TEST_TOKEN", token)
    with Receiver(default_status=401, echo_authorization=True) as receiver:
        webhook = sender(receiver.url, headers=(("Authorization", SecretRef(env="SLUICE_TEST_TOKEN",
                                                                            prefix="Bearer ")),))
        for echo_after in range(170, 215, 3):
            receiver.echo_after = echo_after
            outcome = webhook.attempt([b"{}"], "k")()
            assert outcome.status == 401 and "scripted" in outcome.detail
            leaked = [token[i:i + 4] for i in range(len(token) - 3) if token[i:i + 4] in outcome.detail]
            assert not leaked, (echo_after, outcome.detail)


def test_an_address_embedding_loopback_is_refused_without_dialing():
    """2002:7f00:1::1 is 6to4 for 127.0.0.1; the guard refuses it before any connection."""
    destination = Destination("crm", "webhook", "http://[2002:7f00:1::1]:9/hook", allow_private_network=False)
    outcome = senders.WebhookSender(destination).open().attempt([b"{}"], "k")()
    assert not outcome.ok and not outcome.transient
    assert outcome.detail.startswith("refused: 2002:7f00:1::1 resolves to 2002:7f00:1::1 (6to4 for 127.0.0.1)")
