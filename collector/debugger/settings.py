"""The config's `debugger:` section, typed (pipeline/config_file.py reads and checks it)."""
import ipaddress
from typing import NamedTuple, Optional

DEFAULT_MAX_EVENTS_PER_SOURCE = 500     # Segment's Source Debugger shows a 500-event sample
DEFAULT_MAX_EVENTS_PER_SECOND = 200     # kept per source, sustained; the rest counted as skipped
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024   # an event's JSON as kept; past it a cut preview
DEFAULT_POLL_SECONDS = 5.0              # a BigQuery lookup of the pending entries this often ...
DEFAULT_LOOKUP_MINUTES = 15.0           # ... for this long after an event arrived (then it stays pending)
DEFAULT_MAX_BYTES_BILLED = 10 ** 9      # a lookup that would scan more fails unbilled (counted, logged)


class DebuggerSettings(NamedTuple):
    enabled: bool = True
    token: object = None            # None, the token itself (resolved), or a SecretRef before resolve_collector
    max_events_per_source: int = DEFAULT_MAX_EVENTS_PER_SOURCE
    max_events_per_second: float = DEFAULT_MAX_EVENTS_PER_SECOND
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # --sink mode: where the pipeline job writes, to look fates up (collector.debugger.bigquery_fates)
    warehouse: Optional[str] = None             # bigquery://PROJECT/DATASET
    bigquery_endpoint: Optional[str] = None     # an emulator's URL: anonymous credentials, as the job's flag
    bigquery_location: str = "US"
    poll_seconds: float = DEFAULT_POLL_SECONDS
    lookup_minutes: float = DEFAULT_LOOKUP_MINUTES
    max_bytes_billed: int = DEFAULT_MAX_BYTES_BILLED


def is_loopback(host: str) -> bool:
    """Whether listening on `host` (an address as the socket reports it, or a name) reaches
    this machine only. 0.0.0.0 and :: listen everywhere; a name other than localhost is not
    trusted to stay loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def access(settings: DebuggerSettings, listening_host: str) -> tuple:
    """(on, token): whether the debugger records and answers at all, and the token its API
    needs (None: none needed). A configured token is always needed, on loopback too: behind a
    reverse proxy on the same host every request comes from and names loopback, so where the
    collector listens says nothing of who asks. Without a token it is open only to a collector
    listening on loopback (and then only to requests no proxy forwarded: collector.debugger.api);
    listening elsewhere without a token it is off (nothing recorded, its URLs answer 403), since
    its entries hold events' personal data."""
    if not settings.enabled:
        return False, None
    token: Optional[str] = settings.token if isinstance(settings.token, str) and settings.token else None
    if token is not None:
        return True, token
    return is_loopback(listening_host), None
