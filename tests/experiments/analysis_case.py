"""Generated events for the analysis tests and the figures they must give, computed here in plain
Python from the events themselves (per unit: its exposures, its first one, its window, exclusion),
never read back from a warehouse.

Five experiments at once, over overlapping users:
- checkout: variations 0 / 1 listed, control 0, a start bound (earlier exposures ignored);
- skewed: an 85/15 split against configured 50/50 weights (SRM), an end bound (later exposures ignored);
- pricing: three variations a / b / c, no definition (sorted order, control a);
- quiet: units that never order (no conversions at all);
- sparse: variations 0 / 1 / 2 listed, nobody in 2 (one variation empty).
Orders fall before exposure, inside the windows, in the delay, after the window, and in the 2 hours
summer_not_app's delay adds to its window's end; some units see two variations of one experiment,
some are exposed again later, some exposures come later in the file than a unit's later ones.
"""
import datetime
import json
import math
import random
from collections import defaultdict

from transforms.rules.conditions import compile_condition

T0 = datetime.datetime(2026, 11, 2, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
CHECKOUT_START = T0 + 6 * HOUR
SKEWED_END = T0 + 40 * HOUR
WINDOW_HOURS = 72

BIG_ORDER = {"path": "properties.revenue", "op": "gt", "value": 100}
SUMMER_NOT_APP = {"all": [{"path": "properties.coupon", "op": "starts_with", "value": "SUMMER"},
                          {"not": {"path": "properties.channel", "op": "eq", "value": "app"}}]}
METRICS = [
    {"name": "purchased", "type": "binomial", "event": "Order Completed"},
    {"name": "orders", "type": "count", "event": "Order Completed"},
    {"name": "revenue", "type": "mean", "event": "Order Completed", "value": "properties.revenue"},
    {"name": "big_orders", "type": "binomial", "event": "Order Completed", "when": BIG_ORDER, "window_hours": 24},
    {"name": "summer_not_app", "type": "count", "event": "Order Completed", "when": SUMMER_NOT_APP,
     "delay_hours": 2},
    {"name": "signups", "type": "count", "event": "Signed Up"},                        # no such table
    {"name": "tax", "type": "mean", "event": "Order Completed", "value": "properties.tax"},  # no such column
]
DEFINITIONS = {
    "checkout": {"control": "0", "variations": ["0", "1"], "start": CHECKOUT_START.isoformat()},
    "skewed": {"weights": [0.5, 0.5], "end": SKEWED_END.isoformat()},
    "sparse": {"variations": ["0", "1", "2"]},
}
EXPERIMENTS = {"conversion_window_hours": WINDOW_HOURS, "definitions": DEFINITIONS, "metrics": METRICS}
CUPED_DAYS = 7
OTHER_NAMES = ("Order-Completed", "order completed")   # other events of the table order_completed


def _iso(at: datetime.datetime) -> str:
    """Whole seconds: the stored timestamp is then exactly the one sent."""
    return at.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Events:
    """The generated messages, and counters proving the edge cases occur in them."""

    def __init__(self, seed: int = 18, users: int = 500):
        self.rng = random.Random(seed)
        self.messages = []
        self._exposures = defaultdict(list)   # (experiment, unit) -> [(time, variation)]
        for n in range(users):
            self._user(f"u{n:04d}")
        for n in range(60):
            self._exposed("quiet", f"q{n:03d}", self.rng.choice("01"), T0 + self.rng.uniform(0, 48) * HOUR)
        for n in range(80):
            user = f"s{n:03d}"
            first = T0 + self.rng.uniform(0, 48) * HOUR
            self._exposed("sparse", user, self.rng.choice("01"), first)
            self._orders(user, first)
        self.rng.shuffle(self.messages)   # the pipeline sees exposures in no particular order

    def _track(self, user: str, event: str, at: datetime.datetime, properties: dict) -> None:
        self.messages.append({"type": "track", "event": event, "userId": user, "timestamp": _iso(at),
                              "messageId": f"m{len(self.messages):06d}", "properties": properties})

    def _exposed(self, experiment: str, user: str, variation: str, at: datetime.datetime) -> None:
        # Variation ids sent as GrowthBook does for numbers (ints), as strings otherwise.
        sent = int(variation) if variation.isdigit() else variation
        self._track(user, "Experiment Viewed", at, {"experiment_id": experiment, "variation_id": sent})

    def _user(self, user: str) -> None:
        rng = self.rng
        first = T0 + rng.uniform(0, 48) * HOUR
        if rng.random() < 0.8:
            variation = rng.choice("01")
            self._exposed("checkout", user, variation, first)
            if rng.random() < 0.15:   # seen again later: same variation, the window still runs from the first
                self._exposed("checkout", user, variation, first + rng.uniform(1, 100) * HOUR)
            if rng.random() < 0.05:   # seen in both variations: left out
                self._exposed("checkout", user, "1" if variation == "0" else "0", first + rng.uniform(0, 30) * HOUR)
        if rng.random() < 0.5:
            self._exposed("pricing", user, rng.choice("abc"), first + rng.uniform(-10, 10) * HOUR)
        if rng.random() < 0.4:
            self._exposed("skewed", user, "0" if rng.random() < 0.85 else "1", first + rng.uniform(0, 20) * HOUR)
        self._orders(user, first)

    def _orders(self, user: str, around: datetime.datetime) -> None:
        rng = self.rng
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5))):
            properties = {"revenue": round(rng.lognormvariate(3.8, 0.8), 2) + 0.005}  # never a whole number
            if rng.random() < 0.1:
                del properties["revenue"]            # an order without revenue counts 0 to the sum
            if rng.random() < 0.4:
                properties["coupon"] = rng.choice(("SUMMER10", "SUMMER25", "WINTER5", "summer"))
            if rng.random() < 0.7:
                properties["channel"] = rng.choice(("app", "web"))
            # from 10 days before to 5 days after the first exposure (before, inside, after the window), or
            # in the 2 hours after it (in summer_not_app's delay), or in the 2 hours after the 72 h window
            # (inside summer_not_app's window, which its delay moves 2 hours later)
            draw = rng.random()
            hours = rng.uniform(-240, 120) if draw < 0.75 else rng.uniform(0, 2) if draw < 0.9 else rng.uniform(72, 74)
            # Other events stored in the same table order_completed (the table name folds case and
            # punctuation): never counted by a metric of "Order Completed".
            name = "Order Completed" if rng.random() < 0.85 else rng.choice(OTHER_NAMES)
            self._track(user, name, around + hours * HOUR, properties)


def _time(message: dict) -> datetime.datetime:
    return datetime.datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))


def _variation_order(experiment: str, seen: set) -> list:
    listed = DEFINITIONS.get(experiment, {}).get("variations")
    return list(listed) if listed else sorted(seen)


def expected(messages: list, cuped_days=None, metrics=None) -> dict:
    """{"units": {(experiment, variation): n}, "multiple": {experiment: n},
        "moments": {(experiment, metric, variation): [units, sum, sum_squares(, pre_sum, pre_sum_squares,
        sum_product)]}, "control": {experiment: id}, "order": {experiment: [ids]}}."""
    exposures = defaultdict(list)
    orders = defaultdict(list)
    for m in messages:
        if m["event"] == "Experiment Viewed":
            experiment = m["properties"]["experiment_id"]
            at = _time(m)
            if (experiment == "checkout" and at < CHECKOUT_START) or (experiment == "skewed" and at >= SKEWED_END):
                continue   # outside the definition's [start, end): not considered at all
            exposures[experiment, m["userId"]].append((at, str(m["properties"]["variation_id"])))
        elif m["event"] == "Order Completed":
            orders[m["userId"]].append(m)
    multiple, assigned = defaultdict(int), defaultdict(dict)
    for (experiment, unit), seen in exposures.items():
        if len({v for _, v in seen}) > 1:
            multiple[experiment] += 1
        else:
            assigned[experiment][unit] = min(seen)
    result = {"units": {}, "multiple": dict(multiple), "moments": {}, "control": {}, "order": {},
              "orders": orders, "assigned": assigned}
    for experiment, units in assigned.items():
        order = _variation_order(experiment, {v for _, v in units.values()})
        control = DEFINITIONS.get(experiment, {}).get("control") or order[0]
        result["order"][experiment], result["control"][experiment] = order, control
        for variation in order:
            result["units"][experiment, variation] = sum(1 for _, v in units.values() if v == variation)
        for metric in metrics or METRICS:
            per_variation = {v: [] for v in order}
            for unit, (first, variation) in units.items():
                # docs/experiments.md: an event counts in [first + delay_hours, first + delay_hours +
                # window_hours): the delay moves the whole window later, its length stays.
                delay = metric.get("delay_hours", 0)
                after = _value(metric, orders[unit], first, delay, delay + metric.get("window_hours", WINDOW_HOURS))
                before = _value(metric, orders[unit], first, -24 * cuped_days, 0) if cuped_days else None
                per_variation[variation].append((after, before))
            for variation, values in per_variation.items():
                after = [a for a, _ in values]
                moments = [len(values), math.fsum(after), math.fsum(a * a for a in after)]
                if cuped_days:
                    before = [b for _, b in values]
                    moments += [math.fsum(before), math.fsum(b * b for b in before),
                                math.fsum(a * b for a, b in values)]
                result["moments"][experiment, metric["name"], variation] = moments
    return result


def _value(metric: dict, orders: list, first: datetime.datetime, from_hours: float, to_hours: float) -> float:
    """One unit's value of a metric over its orders in [first + from_hours, first + to_hours)."""
    if metric["event"] != "Order Completed":
        return 0.0
    test = compile_condition(metric["when"], "when") if metric.get("when") else (lambda body: True)
    low, high = first + from_hours * HOUR, first + to_hours * HOUR
    counted = [o for o in orders if low <= _time(o) < high and test(o)]
    if metric["type"] == "binomial":
        return 1.0 if counted else 0.0
    if metric["type"] == "count":
        return float(len(counted))
    path = metric["value"].split(".")[1]
    return math.fsum(o["properties"].get(path, 0.0) for o in counted)


def edge_cases(messages: list) -> dict:
    """How often each edge case occurs among the units analyzed in `checkout`: orders before the
    first exposure, in the first 2 hours (summer_not_app's delay), after the 72 h window, and after it
    but inside summer_not_app's window (its delay moves the window's end too); events of another name
    in the table order_completed inside a window; units
    exposed again later; units whose exposures began before the definition's start; and skewed's
    exposures after its definition's end."""
    found = expected(messages)
    counts = dict.fromkeys(("before", "in_delay", "after_window", "delayed_window_end", "exposed_again",
                            "exposed_before_start"), 0)
    summer_not_app = compile_condition(SUMMER_NOT_APP, "when")
    counts["other_name_in_window"] = 0
    counts["skewed_exposures_after_end"] = sum(
        1 for m in messages if m["event"] == "Experiment Viewed" and m["properties"]["experiment_id"] == "skewed"
        and _time(m) >= SKEWED_END)
    for unit, (first, _) in found["assigned"]["checkout"].items():
        for order in found["orders"][unit]:
            hours = (_time(order) - first) / HOUR
            counts["before"] += hours < 0
            counts["in_delay"] += 0 <= hours < 2
            counts["after_window"] += hours >= WINDOW_HOURS
            # past the 72 h window yet inside summer_not_app's, [2 h, 74 h): counted by it
            counts["delayed_window_end"] += WINDOW_HOURS <= hours < WINDOW_HOURS + 2 and summer_not_app(order)
    others = defaultdict(list)
    for m in messages:
        if m["event"] in OTHER_NAMES:
            others[m["userId"]].append(_time(m))
    for unit, (first, _) in found["assigned"]["checkout"].items():
        counts["other_name_in_window"] += sum(1 for t in others[unit] if first <= t < first + WINDOW_HOURS * HOUR)
    seen = defaultdict(list)
    for m in messages:
        if m["event"] == "Experiment Viewed" and m["properties"]["experiment_id"] == "checkout":
            seen[m["userId"]].append(_time(m))
    for unit in found["assigned"]["checkout"]:
        counts["exposed_again"] += len([t for t in seen[unit] if t >= CHECKOUT_START]) > 1
        counts["exposed_before_start"] += min(seen[unit]) < CHECKOUT_START
    return counts


def run_pipeline(directory, messages: list, warehouse: str, *extra) -> None:
    """The real batch job (FnApiRunner) over `messages` with EXPERIMENTS as the config's section."""
    from pipeline.main import run
    from transforms.warehouse import duckdb_backend
    (directory / "in.jsonl").write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    (directory / "sluice.json").write_text(json.dumps({"experiments": EXPERIMENTS}))  # JSON is YAML
    summary = run(["--input_files", str(directory / "in.jsonl"), "--config", str(directory / "sluice.json"),
                   "--warehouse", warehouse, *extra])
    assert summary["conservation"]["holds"] and summary["stored"] == len(messages), summary
    duckdb_backend.close_all()  # the analysis opens the file itself
