"""The HTML report of an experiment analysis (`python -m pipeline experiments --html PATH`).

render(results, warnings) gives one self-contained page: inline CSS and inline SVG, no script,
no font, image or style fetched from anywhere (its Content-Security-Policy forbids every fetch),
so the file can be mailed or attached to a ticket and opens offline. Every value taken from the
data is escaped: experiment ids, variation ids and metric names come from events.

`results` are rows with the experiment_results columns (a control row has lift, ci_low, ci_high,
p_value, chance_to_win and risk None); `warnings` are dicts with experiment_id (None: the whole
run), kind ("srm", "multiple_exposure", "missing_table", ...) and message. Per experiment the
page shows the units per variation and its warnings first; per metric a table and a chart of
each variation's relative lift against control with its 95% interval.
"""
import datetime
import html
import math
from collections import OrderedDict

SRM_THRESHOLD = 0.001   # DESIGN.md: a sample-ratio mismatch is warned of below this p-value

# The chart's geometry, in SVG user units (the SVG scales to the page's width, keeping its ratio).
WIDTH = 640
LABEL_WIDTH = 150       # variation ids, left of the plot
PLOT_LEFT, PLOT_RIGHT = LABEL_WIDTH + 16, WIDTH - 36   # room for the end ticks' labels
ROW_HEIGHT = 34
TOP, AXIS_HEIGHT = 12, 40
BAR_HEIGHT = 8
# An interval end beyond this relative lift is clipped (drawn to the edge with an arrow): with a
# tiny control, one interval can reach +10,000% and squash every other variation into a pixel.
# Lifts themselves are never clipped; the axis grows to show each point.
CLIP_LIMIT = 1.0

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 24px auto;
       max-width: 980px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 0 0 6px; word-break: break-all; }
h3 { font-size: 16px; margin: 18px 0 6px; word-break: break-all; }
.meta { color: #5b6475; margin: 0 0 16px; }
section.experiment { border: 1px solid #d5d9e2; border-radius: 6px; padding: 16px 18px; margin: 0 0 24px; }
.warning { background: #fff4e0; border: 1px solid #e0a030; border-left: 6px solid #d9480f; border-radius: 4px;
           padding: 8px 12px; margin: 8px 0; font-weight: 600; }
.warning .kind { text-transform: uppercase; font-size: 12px; color: #a23a08; margin-right: 8px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #e3e6ec; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; } td:first-child, th:first-child { text-align: left; white-space: normal;
      word-break: break-all; }
.up { color: #1b7f3b; font-weight: 600; } .down { color: #c0262d; font-weight: 600; } .na { color: #8a93a3; }
svg.chart { display: block; width: 100%; max-width: 640px; height: auto; margin: 4px 0 8px; }
svg .axis line, svg .tick line { stroke: #c3c8d2; } svg .zero { stroke: #1d2330; stroke-width: 1.5; }
svg text { font: 12px system-ui, sans-serif; fill: #1d2330; } svg .tick text { fill: #5b6475; }
svg .flat { fill: #7b8494; } svg .up { fill: #1b7f3b; } svg .down { fill: #c0262d; }
svg text.na { fill: #8a93a3; font-style: italic; }
"""


def render(results: list, warnings: list) -> str:
    """The report as one HTML document (a str)."""
    experiments = _by_experiment(results, warnings)
    analyzed = sorted({_instant(row["analyzed_at"]) for row in results if row.get("analyzed_at") is not None})
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # Nothing may be fetched: the report is one file, and its data came from events.
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
             'style-src \'unsafe-inline\'">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>Experiment results</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Experiment results</h1>",
             f'<p class="meta">Analyzed at {_e(", ".join(analyzed) or "n/a")}; '
             f"{len(experiments)} experiment{'s' if len(experiments) != 1 else ''}. "
             "Lift is relative to control, with its 95% interval.</p>"]
    parts += [_warning(w) for w in warnings if w.get("experiment_id") is None]
    for experiment_id, (rows, notes) in experiments.items():
        parts.append(_experiment(experiment_id, rows, notes))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _by_experiment(results: list, warnings: list) -> "OrderedDict":
    """experiment id -> (its rows, its warnings), in the order the rows (then the warnings) name them."""
    experiments = OrderedDict()
    for row in results:
        experiments.setdefault(row["experiment_id"], ([], []))[0].append(row)
    for warning in warnings:
        if warning.get("experiment_id") is not None:
            experiments.setdefault(warning["experiment_id"], ([], []))[1].append(warning)
    return experiments


def _warning(warning: dict) -> str:
    return (f'<div class="warning" role="alert" data-kind="{_e(warning.get("kind", ""))}">'
            f'<span class="kind">{_e(warning.get("kind", "warning"))}</span>{_e(warning.get("message", ""))}</div>')


def _experiment(experiment_id, rows: list, notes: list) -> str:
    metrics = OrderedDict()
    for row in rows:
        metrics.setdefault(row["metric"], []).append(row)
    out = [f'<section class="experiment" data-experiment="{_e(experiment_id)}">', f"<h2>{_e(experiment_id)}</h2>"]
    out += [_warning(w) for w in notes + _warnings_from_rows(rows, notes)]
    if metrics:
        out.append(_units_table(next(iter(metrics.values()))))
    for metric, metric_rows in metrics.items():
        out.append(_metric(metric, _control_first(metric_rows)))
    out.append("</section>")
    return "\n".join(out)


def _warnings_from_rows(rows: list, given: list) -> list:
    """The SRM and multiple-exposure warnings the rows call for, unless the analysis passed them
    already: the report must not hide them even when rendered from experiment_results alone."""
    kinds = {w.get("kind") for w in given}
    found = []
    srm = [_float(row["srm_p_value"]) for row in rows if _finite(row.get("srm_p_value"))]
    if "srm" not in kinds and srm and min(srm) < SRM_THRESHOLD:
        found.append({"kind": "srm", "message": f"Sample ratio mismatch: p = {min(srm):.2g} (< {SRM_THRESHOLD}); "
                      "the split differs from the configured weights, so the results are not trustworthy."})
    multiple = int(max((_float(row.get("multiple_exposure_units")) or 0 for row in rows), default=0))
    if "multiple_exposure" not in kinds and multiple > 0:
        found.append({"kind": "multiple_exposure", "message": f"{multiple:,} units were exposed to more than one "
                      "variation and are excluded."})
    return found


def _control_first(rows: list) -> list:
    return sorted(rows, key=lambda row: not row.get("is_control"))


def _units_table(rows: list) -> str:
    srm = next((_float(row["srm_p_value"]) for row in rows if _finite(row.get("srm_p_value"))), None)
    body = "".join(f'<tr><td>{_e(row["variation_id"])}{" (control)" if row.get("is_control") else ""}</td>'
                   f'<td>{_number(row.get("units"))}</td></tr>' for row in _control_first(rows))
    return (f'<table class="units"><thead><tr><th>variation</th><th>units</th></tr></thead>'
            f'<tbody>{body}</tbody></table>'
            f'<p class="meta">Sample ratio check: p = {_p_value(srm)}</p>')


def _metric(metric, rows: list) -> str:
    head = ("<tr><th>variation</th><th>units</th><th>sum</th><th>mean</th><th>lift</th><th>95% interval</th>"
            "<th>p-value</th><th>chance to win</th><th>risk</th></tr>")
    body = []
    for row in rows:
        name = _e(row["variation_id"]) + (" (control)" if row.get("is_control") else "")
        if row.get("is_control"):
            cells = ["", "", "", "", ""]
        else:
            cells = [f'<span class="{_direction(row)}">{_percent(row.get("lift"))}</span>', _interval(row),
                     _p_value(row.get("p_value")), _percent(row.get("chance_to_win"), signed=False),
                     _number(row.get("risk"))]
        body.append(f"<tr><td>{name}</td><td>{_number(row.get('units'))}</td><td>{_number(row.get('sum'))}</td>"
                    f"<td>{_number(row.get('mean'))}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return (f'<div class="metric" data-metric="{_e(metric)}"><h3>{_e(metric)}</h3>'
            f'<table class="results"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
            f"{_chart(metric, [row for row in rows if not row.get('is_control')])}</div>")


# --- the chart -------------------------------------------------------------------------------------

def _chart(metric, rows: list) -> str:
    """Each variation's lift as a point and its interval as a bar, on a shared percent axis with a
    zero line; colour when the interval excludes zero. An undefined lift reads "n/a" (no bar)."""
    low, high = _domain(rows)
    ticks = _ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    height = TOP + ROW_HEIGHT * max(len(rows), 1) + AXIS_HEIGHT

    def x(value: float) -> float:
        return PLOT_LEFT + (value - low) / (high - low) * (PLOT_RIGHT - PLOT_LEFT)

    plot_bottom = TOP + ROW_HEIGHT * max(len(rows), 1)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(metric)}: lift against control">']
    for tick in ticks:
        out.append(f'<g class="tick"><line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP}" y2="{plot_bottom}"/>'
                   f'<text x="{x(tick):.1f}" y="{plot_bottom + 16}" text-anchor="middle">'
                   f'{_tick_label(tick)}</text></g>')
    out.append(f'<text class="axis-title" x="{(PLOT_LEFT + PLOT_RIGHT) / 2:.1f}" y="{plot_bottom + 34}" '
               'text-anchor="middle">relative lift against control (point: estimate; bar: 95% interval)</text>')
    out.append(f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{TOP - 4}" y2="{plot_bottom}"/>')
    for i, row in enumerate(rows):
        out.append(_chart_row(row, TOP + ROW_HEIGHT * i + ROW_HEIGHT / 2, x, low, high))
    out.append("</svg>")
    return "".join(out)


def _chart_row(row: dict, y: float, x, low: float, high: float) -> str:
    variation, lift = row["variation_id"], row.get("lift")
    label = str(variation)
    short = label if len(label) <= 20 else label[:19] + "\u2026"
    out = [f'<g class="variation" data-variation="{_e(variation)}"><title>{_e(variation)}: lift {_percent(lift)}, '
           f'95% interval {_interval(row)}</title>',
           f'<text x="{LABEL_WIDTH}" y="{y + 4:.1f}" text-anchor="end">{_e(short)}</text>']
    if not _finite(lift):
        out.append(f'<text class="na" x="{x(0) + 6:.1f}" y="{y + 4:.1f}">n/a</text></g>')
        return "".join(out)
    colour, lift = _direction(row), _float(lift)
    ci_low, ci_high = _float(row.get("ci_low")), _float(row.get("ci_high"))
    if ci_low is not None and ci_high is not None:
        left, right = max(ci_low, low), min(ci_high, high)
        out.append(f'<rect class="interval {colour}" x="{x(left):.1f}" y="{y - BAR_HEIGHT / 2:.1f}" '
                   f'width="{max(x(right) - x(left), 1.0):.1f}" height="{BAR_HEIGHT}" rx="2"/>')
        if ci_low < low:
            out.append(_arrow("clipped-low", x(low), y, -1, colour))
        if ci_high > high:
            out.append(_arrow("clipped-high", x(high), y, 1, colour))
    out.append(f'<circle class="lift {colour}" cx="{x(lift):.1f}" cy="{y:.1f}" r="6" stroke="#1d2330" '
               'stroke-width="1.5"/>')
    out.append("</g>")
    return "".join(out)


def _arrow(kind: str, tip: float, y: float, direction: int, colour: str) -> str:
    """A triangle at the plot's edge pointing outwards: the interval goes on beyond the axis."""
    base = tip - 9 * direction
    return (f'<polygon class="{kind} {colour}" points="{tip:.1f},{y:.1f} {base:.1f},{y - 7:.1f} '
            f'{base:.1f},{y + 7:.1f}"/>')


def _domain(rows: list) -> tuple:
    """The axis's range: zero, every lift and every interval end, interval ends limited to
    CLIP_LIMIT (or the lifts, when those go further), with a margin."""
    lifts = [_float(row["lift"]) for row in rows if _finite(row.get("lift"))]
    ends = [value for row in rows if _finite(row.get("lift"))
            for value in (_float(row.get("ci_low")), _float(row.get("ci_high"))) if value is not None]
    limit_low = min([-CLIP_LIMIT] + lifts)
    limit_high = max([CLIP_LIMIT] + lifts)
    values = [0.0] + lifts + [min(max(value, limit_low), limit_high) for value in ends]
    low, high = min(values), max(values)
    if high - low < 0.002:   # all at zero, or no lift at all: a small symmetric axis
        low, high = low - 0.01, high + 0.01
    margin = (high - low) * 0.05
    return low - margin, high + margin


def _ticks(low: float, high: float) -> list:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high], 4 to 10 of them."""
    rough = (high - low) / 8
    power = 10 ** math.floor(math.log10(rough))
    step = next(base * power for base in (1, 2, 2.5, 5, 10) if base * power >= rough)
    first = math.floor(low / step)
    last = math.ceil(high / step)
    return [i * step for i in range(first, last + 1)]


# --- numbers -----------------------------------------------------------------------------------------

def _float(value):
    """The value as a float (int, float, Decimal, numpy scalars: whatever the warehouse's client
    returned), +-inf included (an unbounded interval end); None when missing or NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _finite(value) -> bool:
    number = _float(value)
    return number is not None and math.isfinite(number)


def _direction(row: dict) -> str:
    """up or down when the 95% interval excludes zero, else flat."""
    ci_low, ci_high = _float(row.get("ci_low")), _float(row.get("ci_high"))
    if ci_low is not None and ci_low > 0:
        return "up"
    if ci_high is not None and ci_high < 0:
        return "down"
    return "flat"


def _percent(value, signed: bool = True) -> str:
    if not _finite(value):
        return '<span class="na">n/a</span>'
    return f"{_float(value) * 100:{'+' if signed else ''}.1f}%"


def _interval(row: dict) -> str:
    ci_low, ci_high = _float(row.get("ci_low")), _float(row.get("ci_high"))
    if ci_low is None or ci_high is None:
        return '<span class="na">n/a</span>'
    return f"{_bound(ci_low)} to {_bound(ci_high)}"


def _bound(value: float) -> str:
    if math.isinf(value):
        return ("\u2212" if value < 0 else "+") + "\u221e"
    return f"{value * 100:+.1f}%"


def _tick_label(value: float) -> str:
    percent = round(value * 100, 6)
    text = f"{percent:+g}%" if percent else "0%"
    return text.replace("-", "\u2212")


def _p_value(value) -> str:
    if not _finite(value):
        return '<span class="na">n/a</span>'
    return "&lt;0.0001" if _float(value) < 0.0001 else f"{_float(value):.4f}"


def _instant(value) -> str:
    """A datetime in UTC to the second (the analysis gives one; a str is shown as it is)."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _number(value) -> str:
    if not _finite(value):
        return '<span class="na">n/a</span>'
    number = _float(value)
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:,.0f}" if 1e4 <= abs(number) < 1e15 else f"{number:.4g}"
