"""What a contracts directory holds, once read: contracts, policies and problems.

Layout (local or gs://); every file is a JSON Schema over the *whole* event, as in
Segment Protocols, so `properties.properties` describes a track event's properties:

    common.json                   every event, any type (Segment's "global" rules)
    identify.json group.json      one event type each (identify traits, group traits,
    page.json screen.json         page / screen properties, alias fields)
    alias.json
    track/<table>.json            one track event; <table> is the event's warehouse
                                  table name: "Order Completed" -> order_completed.json

A track contract matches every event whose name lands in its table, so `Order Completed`,
`order_completed` and `orderCompleted` share one contract as they share one table. Its
`title`, when present, is the event name used in generated tracking code.
"""
from typing import NamedTuple, Optional

TYPE_CONTRACTS = ("identify", "group", "page", "screen", "alias")
COMMON = "common"
TRACK_PREFIX = "track/"
UNPLANNED_POLICIES = ("allow", "block")
VIOLATION_POLICIES = ("allow", "omit_properties", "block")


def json_pointer(path) -> str:
    """A JSON pointer (RFC 6901) for a sequence of keys and indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


class Contract(NamedTuple):
    name: str                  # "common", "identify", ..., "track/order_completed"
    path: str                  # the file it was read from
    schema: dict
    event: Optional[str] = None  # track contracts: the event name for generated code

    @property
    def table(self) -> Optional[str]:
        return self.name[len(TRACK_PREFIX):] if self.name.startswith(TRACK_PREFIX) else None


class Problem(NamedTuple):
    path: str                  # file
    pointer: str               # JSON pointer into that file ("" for the whole file)
    message: str
    severity: str = "error"    # "error" stops the pipeline; "warning" is printed only

    def __str__(self):
        return f"{self.path}#{self.pointer}: {self.severity}: {self.message}"


class ContractSettings(NamedTuple):
    """The config's `contracts` section with the directory's contracts loaded."""
    directory: str
    contracts: tuple = ()          # Contract, in name order
    unplanned: str = "allow"
    violations: str = "allow"
    overrides: tuple = ()          # (contract name, violations policy)

    def policy(self, name: str) -> str:
        return dict(self.overrides).get(name, self.violations)

    def by_name(self) -> dict:
        return {c.name: c for c in self.contracts}
