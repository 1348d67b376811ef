"""An analysis as the terminal shows it, and as one JSON document (`--json`)."""
import datetime
import json

_KINDS = {"binomial": "converted", "count": "events per unit", "mean": "sum per unit"}


def _percent(value, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _lift(row: dict) -> str:
    if row["lift"] is None:
        return "n/a"
    if row["ci_low"] is None:
        return f"{_percent(row['lift'])} [n/a]"
    return f"{_percent(row['lift'])} [{_percent(row['ci_low'])}, {_percent(row['ci_high'])}]"


def _table(header: tuple, lines: list, indent: str) -> list:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    out = []
    for cells in [header, *lines]:
        first, *rest = [str(c) for c in cells]
        cells = [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:])]
        out.append((indent + "  ".join(cells)).rstrip())  # a control's empty cells leave no trailing blanks
    return out


def format_table(analysis, metrics) -> str:
    """Per experiment: its warnings, its units per variation, then per metric the variations with
    units, mean, lift [95% CI], p-value and chance to win. `metrics`: the settings' Metric tuple."""
    out = [f"warning: {w['message']}" for w in analysis.warnings if w["experiment_id"] is None]
    if not analysis.experiments:
        out.append("no experiment has exposures to analyze")
    kinds = {m.name: m.type for m in metrics}
    for summary in analysis.experiments:
        experiment_id = summary["experiment_id"]
        srm = summary["srm_p_value"]
        out += ["", f"experiment {experiment_id}  (control {summary['control']}; SRM p = {_number(srm)}; "
                    f"{summary['multiple_exposure_units']} multiple-exposure units left out)"]
        out += [f"  warning: {w['message']}" for w in analysis.warnings if w["experiment_id"] == experiment_id]
        out.append("  units per variation: " + ", ".join(f"{v['variation_id']}: {v['units']:,}"
                                                     for v in summary["variations"]))
        rows = [r for r in analysis.results if r["experiment_id"] == experiment_id]
        for name in dict.fromkeys(r["metric"] for r in rows):
            lines = [(r["variation_id"] + (" (control)" if r["is_control"] else ""), f"{r['units']:,}",
                      _number(r["mean"]), "" if r["is_control"] else _lift(r),
                      "" if r["is_control"] else _number(r["p_value"]),
                      "" if r["is_control"] else _percent(r["chance_to_win"], signed=False))
                     for r in rows if r["metric"] == name]
            out += ["", f"  {name} ({_KINDS.get(kinds.get(name), '')})"]
            out += _table(("variation", "units", "mean", "lift [95% CI]", "p", "chance to win"), lines, "    ")
    return "\n".join(out).lstrip("\n")


def _plain(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def to_json(analysis) -> str:
    """{analyzed_at, experiments, results, warnings}: the rows as experiment_results has them."""
    return json.dumps({"analyzed_at": _plain(analysis.analyzed_at), "experiments": analysis.experiments,
                       "results": [{k: _plain(v) for k, v in row.items()} for row in analysis.results],
                       "warnings": analysis.warnings}, indent=2)
