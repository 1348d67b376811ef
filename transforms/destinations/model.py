"""The config's `destinations` section, checked and typed.

Launch-time checks (`check_reachable`) name the key path of the first mistake: a webhook
without a url, a secret that cannot be read, a host that resolves to a private address
without `allow_private_network`. Workers rebuild the compiled parts (matcher, mapping,
secrets) from the same plain data in setup().
"""
from typing import NamedTuple, Optional

from transforms import pubsub_names
from transforms.destinations import mapping, netguard, secrets
from transforms.destinations.delivery import RetryPolicy
from transforms.rules.conditions import ConditionError, compile_condition
from transforms.rules.engine import compile_globs, in_scope



class DestinationError(ValueError):
    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


class Batching(NamedTuple):
    max_events: int = 100
    max_bytes: int = 512_000
    max_wait_seconds: float = 5.0
    shards: int = 4          # batches of this destination in flight at once (see the forwarding stage)


class Destination(NamedTuple):
    """One destination, as plain picklable data."""
    name: str
    kind: str                        # webhook | pubsub
    url: Optional[str] = None        # webhook
    method: str = "POST"
    body: str = "batch"              # webhook: batch ({"batch": [...]}) or event (the payload alone)
    headers: tuple = ()              # ((name, value or SecretRef), ...)
    timeout_seconds: float = 10.0
    signing_secret: Optional[secrets.SecretRef] = None
    allow_private_network: bool = False
    topic: Optional[str] = None      # pubsub
    types: Optional[tuple] = None
    events: Optional[tuple] = None   # name globs (track: event; page/screen: name)
    when: Optional[dict] = None      # a condition (transforms.rules.conditions)
    consent: tuple = ()              # categories it needs
    mapping: Optional[dict] = None
    batch: Batching = Batching()
    retry: RetryPolicy = RetryPolicy()


class Matcher:
    """Which events a destination takes: types, name globs and a condition, all optional."""

    def __init__(self, destination: Destination):
        self._types = frozenset(destination.types) if destination.types else None
        self._names = compile_globs(destination.events) if destination.events else None
        self._when = compile_condition(destination.when, "when") if destination.when else None

    def __call__(self, body: dict) -> bool:
        return in_scope(body, self._types, self._names) and (self._when is None or self._when(body))


def parse(section) -> tuple:
    """The section (already valid against the config schema) as Destinations; DestinationError
    for what the schema cannot say."""
    out, seen = [], set()
    for index, spec in enumerate(section or ()):
        where = f"destinations[{index}]"
        name = spec["name"]
        if name in seen:
            raise DestinationError(f"{where}.name", f"{name!r} is used by an earlier destination")
        seen.add(name)
        out.append(_parse_one(spec, where))
    return tuple(out)


def _parse_one(spec: dict, where: str) -> Destination:
    kind = spec["type"]
    needed = "url" if kind == "webhook" else "topic"
    if needed not in spec:
        raise DestinationError(f"{where}.{needed}", f"a {kind} destination needs a {needed}")
    webhook_only = ("url", "method", "body", "headers", "timeout_seconds", "signing_secret", "allow_private_network")
    stray = [key for key in (webhook_only if kind == "pubsub" else ("topic",)) if key in spec]
    if stray:
        raise DestinationError(f"{where}.{stray[0]}", f"not a setting of a {kind} destination")
    if kind == "pubsub" and not pubsub_names.TOPIC.fullmatch(spec["topic"]):
        raise DestinationError(f"{where}.topic", "expected projects/PROJECT/topics/NAME")
    headers = tuple((key, secrets.parse(value) or value) for key, value in spec.get("headers", {}).items())
    batch, retry = dict(spec.get("batch", {})), spec.get("retry", {})
    if spec.get("body") == "event":  # one event per request
        if batch.get("max_events", 1) != 1:
            raise DestinationError(f"{where}.batch.max_events", "body: event sends one event per request; "
                                                                "leave max_events out or set it to 1")
        batch["max_events"] = 1
    destination = Destination(
        spec["name"], kind, spec.get("url"), spec.get("method", "POST"), spec.get("body", "batch"), headers,
        float(spec.get("timeout_seconds", 10.0)), secrets.parse(spec.get("signing_secret")),
        bool(spec.get("allow_private_network", False)), spec.get("topic"),
        tuple(spec["types"]) if "types" in spec else None, tuple(spec["events"]) if "events" in spec else None,
        spec.get("when"), tuple(spec.get("consent", ())), spec.get("mapping"),
        Batching(batch.get("max_events", Batching().max_events), batch.get("max_bytes", Batching().max_bytes),
                 float(batch.get("max_wait_seconds", Batching().max_wait_seconds)),
                 batch.get("shards", Batching().shards)),
        RetryPolicy(retry.get("max_attempts", RetryPolicy().max_attempts),
                    float(retry.get("initial_backoff_seconds", RetryPolicy().initial_backoff_seconds)),
                    float(retry.get("max_backoff_seconds", RetryPolicy().max_backoff_seconds)),
                    float(retry.get("max_age_seconds", RetryPolicy().max_age_seconds))))
    try:
        Matcher(destination)
    except ConditionError as exc:
        raise DestinationError(f"{where}.{exc.where}", exc.message) from None
    try:
        mapping.compile_mapping(destination.mapping, f"{where}.mapping")
    except mapping.MappingError as exc:
        raise DestinationError(exc.where, exc.message) from None
    return destination


def check_reachable(destinations: tuple, environ=None, getaddrinfo=None) -> None:
    """Launch checks that read the outside world: every secret resolves, every webhook URL is
    http(s), resolves, and to a public address unless allowed; plain http only on a private
    network. DestinationError names the key."""
    for index, destination in enumerate(destinations):
        where = f"destinations[{index}]"
        for key, value in destination.headers:
            if isinstance(value, secrets.SecretRef):
                _resolve(value, f"{where}.headers.{key}", environ)
        if destination.signing_secret:
            _resolve(destination.signing_secret, f"{where}.signing_secret", environ)
        if destination.kind != "webhook":
            continue
        try:
            kwargs = {"getaddrinfo": getaddrinfo} if getaddrinfo else {}
            target = netguard.resolve(destination.url, destination.allow_private_network, **kwargs)
        except (ValueError, netguard.NetworkRefused) as exc:
            raise DestinationError(f"{where}.url", str(exc)) from None
        if target.scheme == "http" and not destination.allow_private_network:
            raise DestinationError(f"{where}.url", "use https:// (plain http:// only with allow_private_network: true)")


def _resolve(ref, where: str, environ) -> None:
    try:
        secrets.resolve(ref, environ)
    except secrets.SecretError as exc:
        raise DestinationError(where, str(exc)) from None
