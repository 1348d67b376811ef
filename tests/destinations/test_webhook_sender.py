"""The webhook sender against real HTTP servers on 127.0.0.1: redirects, the guard on
redirects, keep-alive, and secrets kept out of what a failure says."""
import json

from tests.destinations.receiver import Receiver
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
