"""The pure parts of forwarding: mappings, signatures, retry decisions, the network guard,
secrets."""
import socket
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from transforms.destinations import mapping, netguard, secrets, signing
from transforms.destinations.delivery import Outcome, RetryPolicy, backoff, deliver, parse_retry_after
from transforms.destinations.model import Destination, Matcher

EVENT = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
         "properties": {"total": 12.5, "items": [{"sku": "a"}]}, "context": {"traits": {"email": "a@b.c"}}}


def test_mapping_builds_the_payload_from_paths_constants_and_defaults():
    build = mapping.compile_mapping({"name": {"@path": "$.event"}, "email": {"@path": "$.context.traits.email"},
                                     "coupon": {"@path": "$.properties.coupon"},
                                     "currency": {"@path": "$.properties.currency", "default": "USD"},
                                     "source": "sluice", "order": {"total": {"@path": "$.properties.total"},
                                                                   "items": {"@path": "$.properties.items"}},
                                     "ids": [{"@path": "$.userId"}, {"@path": "$.anonymousId"}]})
    assert build(EVENT) == {"name": "Order Completed", "email": "a@b.c", "currency": "USD", "source": "sluice",
                            "order": {"total": 12.5, "items": [{"sku": "a"}]}, "ids": ["u1"]}
    assert mapping.compile_mapping(None)(EVENT) is EVENT
    assert mapping.compile_mapping({"all": {"@path": "$"}})(EVENT) == {"all": EVENT}


@pytest.mark.parametrize("spec, where", [
    ({"x": {"@path": "properties.total"}}, "mapping.x.@path"),
    ({"x": {"@path": "$.a..b"}}, "mapping.x.@path"),
    ({"x": {"@path": "$.a", "fallback": 1}}, "mapping.x.fallback"),
    ({"@path": "$.a"}, "mapping"),
])
def test_mapping_mistakes_name_their_key(spec, where):
    with pytest.raises(mapping.MappingError) as error:
        mapping.compile_mapping(spec)
    assert error.value.where == where


def test_signatures_verify_and_refuse_tampering_other_keys_and_old_timestamps():
    body = b'{"batch":[1]}'
    header = signing.sign("key", body, now=lambda: 1_000_000)
    # The documented header, its HMAC computed once outside the project's code (receivers verify
    # it with their own code, so the format is fixed):
    #     printf '%s' '1000000.' '{"batch":[1]}' | openssl dgst -sha256 -hmac key
    assert header == "t=1000000,v1=d71fe6f070472ab6fe397b92eeb66e2a1dda076d407a85d0cd37cb13c1330fde"
    assert signing.verify("key", header, body, now=lambda: 1_000_100)
    assert not signing.verify("key", header, body + b" ", now=lambda: 1_000_100)
    assert not signing.verify("other", header, body, now=lambda: 1_000_100)
    assert not signing.verify("key", header, body, now=lambda: 1_000_301)  # a replay, too late
    assert not signing.verify("key", "garbage", body)


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 28 <= parse_retry_after(format_datetime(later, usegmt=True)) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_deliver_retries_transient_answers_then_succeeds_honouring_retry_after():
    clock, answers = Clock(), [Outcome(False, 503, True, "HTTP 503"), Outcome(False, 429, True, "HTTP 429", 4.0),
                               Outcome(True, 200, False, "HTTP 200")]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        clock.sleep(seconds)
    result = deliver(lambda: answers.pop(0), RetryPolicy(6, 1.0, 8.0, 60.0), 0.0, clock=clock, sleep=sleep,
                     rand=lambda: 0.5)
    assert result.delivered and result.attempts == 3 and waits == [0.5, 4.0]


def test_deliver_stops_at_a_permanent_answer_at_max_attempts_and_at_max_age():
    clock = Clock()
    permanent = deliver(lambda: Outcome(False, 400, False, "HTTP 400"), RetryPolicy(), 0.0, clock=clock,
                        sleep=clock.sleep)
    assert (permanent.delivered, permanent.attempts, permanent.last.status) == (False, 1, 400)
    attempts = deliver(lambda: Outcome(False, 503, True, "HTTP 503"), RetryPolicy(3, 0.1, 1, 600), 0.0,
                       clock=clock, sleep=clock.sleep)
    assert attempts.attempts == 3 and not attempts.delivered
    clock = Clock()
    aged = deliver(lambda: Outcome(False, 429, True, "HTTP 429", 100.0), RetryPolicy(10, 0.1, 1, 60), 0.0,
                   clock=clock, sleep=clock.sleep)
    assert aged.attempts == 1 and "max_age_seconds" in aged.last.detail


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(10, 0.5, 4.0, 300)
    assert [backoff(n, policy, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff(3, policy, rand=lambda: 0.0) == 0.0


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
    ("fc00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("8.8.8.8", True),
    ("2606:4700:4700::1111", True)])
def test_only_public_addresses_count_as_public(address, public):
    assert netguard.is_public(address) is public


@pytest.mark.parametrize("address, embedded", [
    ("2002:7f00:1::1", "6to4 for 127.0.0.1"), ("2002:a00:1::1", "6to4 for 10.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 for 169.254.169.254"), ("64:ff9b::7f00:1", "NAT64 for 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 for 169.254.169.254"), ("::ffff:10.0.0.1", "IPv4-mapped for 10.0.0.1")])
def test_an_ipv6_address_is_judged_by_the_ipv4_address_it_embeds(address, embedded):
    assert not netguard.is_public(address)
    assert netguard.refusal(address) == f"{address} ({embedded}), a private, loopback or link-local address"


@pytest.mark.parametrize("address, form", [
    ("2001:0:a00:1:0:0:80ff:fffe", "Teredo"),  # server 10.0.0.1, client 127.0.0.1 (stored inverted)
    ("64:ff9b:1::7f00:1", "local-use NAT64"), ("::7f00:1", "IPv4-compatible")])
def test_ipv6_forms_leading_where_the_guard_cannot_see_are_refused(address, form):
    assert not netguard.is_public(address)
    assert f"{address}, a{'n' if form[0] == 'I' else ''} {form} address" in netguard.refusal(address)


def fake_dns(table):
    """getaddrinfo answering from a table, shaped like the real one."""
    def getaddrinfo(host, port, type=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], port))]
    return getaddrinfo


def test_a_name_resolving_to_a_private_address_is_refused_unless_allowed():
    dns = fake_dns({"hooks.example.com": "93.184.216.34", "internal.example.com": "10.0.0.5"})
    target = netguard.resolve("https://hooks.example.com/in?x=1", False, getaddrinfo=dns)
    assert (target.address, target.port, target.path) == ("93.184.216.34", 443, "/in?x=1")
    with pytest.raises(netguard.NetworkRefused, match="10.0.0.5, a private"):
        netguard.resolve("https://internal.example.com/", False, getaddrinfo=dns)
    assert netguard.resolve("https://internal.example.com/", True, getaddrinfo=dns).address == "10.0.0.5"
    with pytest.raises(ValueError, match="credentials in the URL"):
        netguard.resolve("https://user:pw@hooks.example.com/", False, getaddrinfo=dns)


def test_a_name_resolving_to_6to4_for_loopback_is_refused():
    dns = fake_dns({"tunnel.example.com": "2002:7f00:1::1"})
    with pytest.raises(netguard.NetworkRefused, match=r"resolves to 2002:7f00:1::1 \(6to4 for 127.0.0.1\), a private"):
        netguard.resolve("https://tunnel.example.com/", False, getaddrinfo=dns)


def test_secrets_come_from_the_environment_or_a_file_and_are_redacted(tmp_path):
    (tmp_path / "token").write_text("s3cr3t-file\n")
    assert secrets.resolve(secrets.SecretRef(env="T", prefix="Bearer "), {"T": "abc123"}) == "Bearer abc123"
    assert secrets.resolve(secrets.SecretRef(file=str(tmp_path / "token"))) == "s3cr3t-file"
    with pytest.raises(secrets.SecretError, match="environment variable MISSING is not set"):
        secrets.resolve(secrets.SecretRef(env="MISSING"), {})
    assert secrets.redact("bad token abc123 given", ["abc123"]) == "bad token [redacted] given"


def test_an_excerpt_redacts_before_it_cuts_and_drops_a_secret_cut_by_the_read_bound():
    token = "tok-echoed-123456"
    echo = "e" * 190 + " " + token + " more"
    assert secrets.excerpt(echo, [token], 200) == "e" * 190 + " [redacted"  # 200 characters, no token
    # An answer read up to a bound can end inside a secret; squeezing its blank space would
    # bring that start into the excerpt.
    read = " " * 65000 + "error: " + token[:9]
    assert secrets.excerpt(read, [token], 200, cut_short=True) == "error:"
    assert secrets.excerpt(read, [token], 200) == "error: " + token[:9]  # why cut_short is needed
    assert secrets.excerpt("line one\n\tline two", [], 200) == "line one line two"


def test_a_matcher_takes_types_name_globs_and_a_condition():
    matches = Matcher(Destination("d", "webhook", types=("track", "page"), events=("Order *", "Home"),
                                  when={"path": "properties.total", "op": "gt", "value": 10}))
    assert matches(EVENT)
    assert not matches({**EVENT, "properties": {"total": 3}})
    assert not matches({**EVENT, "event": "Signed Up"})
    assert not matches({**EVENT, "type": "identify"})
    assert matches({"type": "page", "name": "Home", "properties": {"total": 11}})
