"""The run summary: conservation totals read back from the run's Beam counters.

Conservation: every event unit (an event after batch splitting, or a message refused
before it could be split) ends stored, dead-lettered, or dropped by a named policy:
    events == stored + sum(dead_lettered) + sum(dropped)
and, per destination, every event consent let through is filtered out, delivered or
dead-lettered (`delivery_failed`, one per destination, outside the sum above):
    candidates == dropped_filter + delivered + failed
"""
import json
from collections import defaultdict

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms import metrics
from transforms.warehouse.bigquery_backend import NOT_CALLS


def counters_from_result(result) -> dict:
    """{counter name: value} summed over steps, from a finished PipelineResult."""
    totals = defaultdict(int)
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += value or 0
    return dict(totals)


def _by_prefix(counters: dict, prefix: str) -> dict:
    return {name[len(prefix):]: value for name, value in sorted(counters.items())
            if name.startswith(prefix) and value}


def _nested(flat: dict) -> dict:
    """{"rule.applied": 3} -> {"rule": {"applied": 3}} (split at the last dot: names may hold dots)."""
    nested = defaultdict(dict)
    for name, value in flat.items():
        outer, _, inner = name.rpartition(".")
        nested[outer][inner] = value
    return dict(nested)


def build(counters: dict, running: bool = False) -> dict:
    """The summary of the counters. running: a streaming run's live summary, whose events may be
    in flight between stages: its conservation says how many (`in_flight`) instead of holding or
    failing, which only the run's end decides."""
    summary = {
        "read": counters.get("read", 0),
        "events": counters.get("events", 0),
        "stored": counters.get("stored", 0),
        "dead_lettered": _by_prefix(counters, "dead_lettered."),
        "dropped": _by_prefix(counters, "dropped."),
        "forwarded": _by_prefix(counters, "forwarded."),
        "published": _by_prefix(counters, "published."),
        "tables": _by_prefix(counters, "rows."),
        "type_conflicts": _by_prefix(counters, "type_conflicts."),
        "column_cap": _by_prefix(counters, "column_cap."),
        "exposures_unusable": _by_prefix(counters, "exposures_unusable."),
        "contracts": {key: counters.get(f"contracts.{key}", 0) for key in ("unplanned", "violations", "omitted")},
        "consent": {key: counters.get(f"consent.{key}", 0) for key in ("present", "missing")},
        "transforms": {rule: {"applied": 0, **counts}  # matched, applied (changed or dropped), ...
                       for rule, counts in _nested(_by_prefix(counters, "transforms.")).items()},
        "api_calls": _by_prefix(counters, "api_calls."),
        "not_forwarded": _nested({name.replace(".dropped_", "."): value for name, value
                                  in _by_prefix(counters, "destination.").items() if ".dropped_" in name}),
    }
    summary["destinations"] = _destinations(counters)
    accounted = summary["stored"] + sum(summary["dead_lettered"].values()) + sum(summary["dropped"].values())
    by_destination = {name: d["candidates"] - d["dropped_filter"] - d["delivered"] - d["failed"]
                      for name, d in summary["destinations"].items()}
    if running:
        summary["conservation"] = {"running": True, "in_flight": summary["events"] - accounted}
        if any(by_destination.values()):
            summary["conservation"]["in_flight_by_destination"] = {k: v for k, v in by_destination.items() if v}
        return summary
    summary["conservation"] = {"holds": accounted == summary["events"] and not any(by_destination.values()),
                               "unaccounted": summary["events"] - accounted}
    if any(by_destination.values()):
        summary["conservation"]["unaccounted_by_destination"] = {k: v for k, v in by_destination.items() if v}
    return summary


_DESTINATION_COUNTS = ("candidates", "dropped_filter", "dropped_consent", "dropped_integrations", "failed",
                       "requests", "retried", "latency_us")


def _destinations(counters: dict) -> dict:
    """Per destination: what consent let through and what became of it, requests, retries,
    mean request latency."""
    names = {name.split(".")[1] for name in counters if name.startswith("destination.")}
    names |= set(_by_prefix(counters, "forwarded."))
    out = {}
    for name in sorted(names):
        counts = {kind: counters.get(f"destination.{name}.{kind}", 0) for kind in _DESTINATION_COUNTS}
        counts["delivered"] = counters.get(f"forwarded.{name}", 0)
        total_us = counts.pop("latency_us")
        counts["latency_ms_mean"] = round(total_us / counts["requests"] / 1000, 2) if counts["requests"] else None
        out[name] = counts
    return out


def format_table(summary: dict) -> str:
    lines = ["Sluice run summary", "-" * 44]

    def row(label, value, indent=0):
        lines.append(f"{' ' * indent}{label:<{34 - indent}}{value:>10,}")

    row("messages read", summary["read"])
    row("events", summary["events"])
    row("stored", summary["stored"])
    for title, key in (("dead-lettered", "dead_lettered"), ("dropped by policy", "dropped"),
                       ("forwarded", "forwarded")):
        row(title, sum(summary[key].values()))
        for name, value in summary[key].items():
            row(name, value, 2)
    lines.append("-" * 44)
    # rows.users counts identifies applied, not rows: DuckDB upserts them into one row per user
    # (docs/warehouse.md#summary-and-metrics), so it is neither summed nor labelled as rows.
    tables = {name: value for name, value in summary["tables"].items() if name != "users"}
    row("rows written", sum(tables.values()))
    for name, value in tables.items():
        row(name, value, 2)
    if "users" in summary["tables"]:
        row("identifies applied to users", summary["tables"]["users"])
    for title, key in (("published to Pub/Sub", "published"),
                       ("values kept in _unmapped (type)", "type_conflicts"),
                       ("values kept in _unmapped (cap)", "column_cap"),
                       ("exposures stored without a row", "exposures_unusable")):
        if summary[key]:
            row(title, sum(summary[key].values()))
            for name, value in summary[key].items():
                row(name, value, 2)
    contracts = summary.get("contracts", {})
    if any(contracts.values()):
        row("contracts: unplanned events", contracts["unplanned"])
        row("contracts: violations", contracts["violations"])  # kept, omitted or blocked
        row("contracts: values omitted", contracts["omitted"])
    consent = summary.get("consent", {})
    if any(consent.values()):
        row("consent: with a consent object", consent["present"])
        row("consent: without one", consent["missing"])
    for rule, counts in summary.get("transforms", {}).items():
        # applied: the events the rule changed (dropped, for drop_event); matched: in its scope
        row(f"rule {rule}: applied", counts.get("applied", 0))
        row("of events matched", counts.get("matched", 0), 2)
        for name, value in counts.items():
            if name not in ("applied", "matched"):
                row(name, value, 2)
    for destination, counts in summary.get("destinations", {}).items():
        row(f"destination {destination}: delivered", counts["delivered"])
        for name in ("failed", "dropped_filter", "dropped_consent", "dropped_integrations", "requests", "retried"):
            if counts[name]:
                row(name, counts[name], 2)
    calls = {name: value for name, value in summary.get("api_calls", {}).items() if name not in NOT_CALLS}
    if calls:  # the figures bigquery.md#api-calls promises
        row("BigQuery API calls", sum(calls.values()))
        for name, value in calls.items():
            row(name, value, 2)
    for name, label in NOT_CALLS.items():
        if summary.get("api_calls", {}).get(name):
            row(label, summary["api_calls"][name])
    lines.append("-" * 44)
    conservation = summary["conservation"]
    if conservation.get("running"):
        lines.append(f"conservation checked at the end: {conservation['in_flight']:,} events in flight")
        return "\n".join(lines)
    verdict = ("holds: events = stored + dead-lettered + dropped" if conservation["holds"]
               else f"BROKEN: {conservation['unaccounted']:,} events unaccounted for"
               + "".join(f"; {n:,} for destination {d}"
                         for d, n in conservation.get("unaccounted_by_destination", {}).items()))
    lines.append(f"conservation {verdict}")
    return "\n".join(lines)


def write(path: str, summary: dict) -> None:
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8") + b"\n")
