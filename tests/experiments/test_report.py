"""The HTML report (analysis/report.py): its structure read back with the stdlib's html.parser, and
the page opened in Debian's chromium (playwright) to see it drawn without fetching anything.

The input rows are written by hand in experiment_results' shape, with figures chosen to make
each property visible (a larger lift, an interval excluding zero, a huge interval, an undefined
lift); the assertions are about what the page shows, not about the report's own arithmetic."""
import html.parser
from pathlib import Path

import pytest

from analysis.report import render

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base", "embed", "track"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def all(self, tag: str = None, cls: str = None) -> list:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found += child.all(tag, cls)
        return found

    def text_content(self) -> str:
        return self.text + "".join(child.text_content() for child in self.children)


class Tree(html.parser.HTMLParser):
    """A document tree, strict enough to notice markup the data injected: every element opened is
    closed in order (an unbalanced tag fails the parse)."""

    def __init__(self, document: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.feed(document)
        self.close()
        assert self.stack == [self.root], f"unclosed: {[n.tag for n in self.stack[1:]]}"

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs), self.stack[-1]))

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        # Text after a child element is kept in a text node of its own, so order is preserved.
        node = Node("#text", {}, self.stack[-1])
        node.text = data
        self.stack[-1].children.append(node)


def parse(document: str) -> Node:
    return Tree(document).root


def row(experiment, metric, variation, units, mean, lift=None, ci=(None, None), control=False, p=None,
        srm=0.5, multiple=0) -> dict:
    return {"analyzed_at": "2026-12-03 06:00:00", "experiment_id": experiment, "metric": metric,
            "variation_id": variation, "is_control": control, "units": units, "sum": mean * units,
            "sum_squares": mean * units, "mean": mean, "lift": lift, "ci_low": ci[0], "ci_high": ci[1],
            "p_value": p, "chance_to_win": None if control else 0.5, "risk": None if control else 0.01,
            "srm_p_value": srm, "multiple_exposure_units": multiple}


def checkout_rows(srm=0.42, multiple=0) -> list:
    """checkout: control "0" and three treatments, two metrics. purchased: "1" clearly up, "2"
    slightly down with an interval across zero, "3" with an interval far too wide for the axis.
    revenue: "1" up, "2" down for sure, "3" with no lift (the control's mean was 0)."""
    common = {"srm": srm, "multiple": multiple}
    return [
        row("checkout", "purchased", "0", 5000, 0.10, control=True, **common),
        row("checkout", "purchased", "1", 5010, 0.12, lift=0.20, ci=(0.08, 0.32), p=0.001, **common),
        row("checkout", "purchased", "2", 4990, 0.098, lift=-0.02, ci=(-0.13, 0.09), p=0.7, **common),
        row("checkout", "purchased", "3", 5000, 0.104, lift=0.04, ci=(-6.0, 40.0), p=0.9, **common),
        row("checkout", "revenue", "0", 5000, 0.0, control=True, **common),
        row("checkout", "revenue", "1", 5010, 3.1, lift=0.15, ci=(0.02, 0.28), p=0.02, **common),
        row("checkout", "revenue", "2", 4990, 2.0, lift=-0.25, ci=(-0.40, -0.10), p=0.001, **common),
        row("checkout", "revenue", "3", 5000, 2.5, **common),
    ]


def experiment(tree: Node, experiment_id: str) -> Node:
    [section] = [s for s in tree.all("section", "experiment") if s.attrs["data-experiment"] == experiment_id]
    return section


def chart_rows(metric: Node) -> dict:
    """variation id -> its chart group."""
    [chart] = metric.all("svg", "chart")
    return {g.attrs["data-variation"]: g for g in chart.all("g", "variation")}


def test_one_chart_per_metric_each_treatment_drawn_and_a_larger_lift_further_right():
    tree = parse(render(checkout_rows(), []))
    section = experiment(tree, "checkout")
    metrics = {m.attrs["data-metric"]: m for m in section.all("div", "metric")}
    assert list(metrics) == ["purchased", "revenue"]
    for metric in metrics.values():
        assert len(metric.all("svg", "chart")) == 1
        assert len(metric.all("line", "zero")) == 1
        # the control is the reference, not a point of its own
        assert set(chart_rows(metric)) == {"1", "2", "3"}

    purchased = chart_rows(metrics["purchased"])
    cx = {v: float(g.all("circle", "lift")[0].attrs["cx"]) for v, g in purchased.items()}
    zero = float(metrics["purchased"].all("line", "zero")[0].attrs["x1"])
    assert cx["2"] < zero < cx["3"] < cx["1"]   # lifts -2%, +4%, +20%
    bar = purchased["1"].all("rect", "interval")[0]
    left, right = float(bar.attrs["x"]), float(bar.attrs["x"]) + float(bar.attrs["width"])
    assert zero < left < cx["1"] < right         # +8% .. +32% around +20%, clear of zero

    # the axis is labelled in percent, through zero
    labels = [t.text_content() for t in metrics["purchased"].all("g", "tick")]
    assert "0%" in labels and all(label.endswith("%") for label in labels)


def test_significance_colours_and_an_undefined_lift():
    section = experiment(parse(render(checkout_rows(), [])), "checkout")
    metrics = {m.attrs["data-metric"]: m for m in section.all("div", "metric")}
    purchased, revenue = chart_rows(metrics["purchased"]), chart_rows(metrics["revenue"])

    def classes(group):
        return set(group.all("circle", "lift")[0].attrs["class"].split())
    assert "up" in classes(purchased["1"]) and "up" in classes(revenue["1"])
    assert "down" in classes(revenue["2"])
    assert not {"up", "down"} & classes(purchased["2"])   # its interval crosses zero

    undefined = revenue["3"]
    assert not undefined.all("circle") and not undefined.all("rect")
    assert "n/a" in undefined.text_content()
    [table_row] = [tr for tr in metrics["revenue"].all("tr") if tr.all("td")
                   and tr.all("td")[0].text_content() == "3"]
    assert "n/a" in table_row.text_content()


def test_a_huge_interval_is_clipped_with_arrows_and_does_not_squash_the_others():
    metric = [m for m in parse(render(checkout_rows(), [])).all("div", "metric")
              if m.attrs["data-metric"] == "purchased"][0]
    groups = chart_rows(metric)
    [svg] = metric.all("svg", "chart")
    width = float(svg.attrs["width"])
    huge = groups["3"]
    assert huge.all("polygon", "clipped-low") and huge.all("polygon", "clipped-high")
    assert not groups["1"].all("polygon") and not groups["2"].all("polygon")
    bar = huge.all("rect", "interval")[0]
    assert 0 <= float(bar.attrs["x"]) and float(bar.attrs["x"]) + float(bar.attrs["width"]) <= width
    # variation 1's interval (24 points wide) keeps a readable size although 3's spans 4,600 points
    assert float(groups["1"].all("rect", "interval")[0].attrs["width"]) > width / 20
    # the exact figures stay in the table
    assert "-600.0% to +4000.0%" in metric.all("table", "results")[0].text_content()


def test_units_per_variation_and_no_warning_when_the_split_is_fine():
    section = experiment(parse(render(checkout_rows(srm=0.42), [])), "checkout")
    assert not section.all(cls="warning")
    units = section.all("table", "units")[0]
    cells = [[td.text_content() for td in tr.all("td")] for tr in units.all("tr") if tr.all("td")]
    assert cells == [["0 (control)", "5,000"], ["1", "5,010"], ["2", "4,990"], ["3", "5,000"]]


def test_a_sample_ratio_mismatch_and_multiple_exposures_are_warned_of_from_the_rows():
    section = experiment(parse(render(checkout_rows(srm=0.0004, multiple=37), [])), "checkout")
    warnings = {w.attrs["data-kind"]: w.text_content() for w in section.all(cls="warning")}
    assert set(warnings) == {"srm", "multiple_exposure"}
    assert "37" in warnings["multiple_exposure"]
    # the warnings come before the first metric
    children = [c for c in section.children if c.tag != "#text"]
    first_metric = next(i for i, c in enumerate(children) if "metric" in c.attrs.get("class", ""))
    assert all(i < first_metric for i, c in enumerate(children) if "warning" in c.attrs.get("class", ""))


def test_the_analysis_warnings_are_shown_once_each_and_run_wide_ones_on_top():
    given = [{"experiment_id": "checkout", "kind": "srm", "message": "SRM: p = 0.0004 against weights 0.5/0.5"},
             {"experiment_id": "pricing", "kind": "missing_table", "message": "no table order_completed"},
             {"experiment_id": None, "kind": "missing_table", "message": "no exposures at all yet"}]
    tree = parse(render(checkout_rows(srm=0.0004), given))
    checkout = experiment(tree, "checkout")
    assert [w.text_content() for w in checkout.all(cls="warning")] == ["srmSRM: p = 0.0004 against weights 0.5/0.5"]
    # an experiment with warnings but no rows still gets its section
    assert "no table order_completed" in experiment(tree, "pricing").text_content()
    [body] = tree.all("body")
    top = [w for w in body.children if "warning" in w.attrs.get("class", "")]
    assert [w.text_content() for w in top] == ["missing_tableno exposures at all yet"]


HOSTILE = '<script>alert("x")</script>'


def test_values_from_events_are_escaped():
    rows = [dict(r, experiment_id=HOSTILE, metric='"><img src=x onerror=alert(1)>',
                 variation_id="</svg><script>1</script>" if not r["is_control"] else "0")
            for r in checkout_rows()[:2]]
    document = render(rows, [{"experiment_id": HOSTILE, "kind": "<b>", "message": "<i>hi</i>"}])
    tree = parse(document)   # balanced: nothing injected closed or opened an element
    assert not tree.all("script") and not tree.all("img") and not tree.all("b") and not tree.all("i")
    section = experiment(tree, HOSTILE)
    assert HOSTILE in section.all("h2")[0].text_content()
    [metric] = section.all("div", "metric")
    assert metric.attrs["data-metric"] == '"><img src=x onerror=alert(1)>'
    assert "</svg><script>1</script>" in chart_rows(metric)
    assert "<i>hi</i>" in section.all(cls="warning")[0].text_content()


def test_the_report_is_one_document_that_fetches_nothing_by_itself():
    document = render(checkout_rows(), [])
    tree = parse(document)
    for tag, attr in (("script", None), ("link", None), ("img", None), ("iframe", None), ("object", None)):
        assert not tree.all(tag)
    assert "url(" not in document and "@import" not in document and "http://" not in document.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    [csp] = [m for m in tree.all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"]


# --- in a real browser -----------------------------------------------------------------------------

MEASURE = """() => [...document.querySelectorAll('svg.chart')].map((svg) => {
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll('g.variation')].map((g) => {
    const dot = g.querySelector('circle.lift'), bar = g.querySelector('rect.interval');
    const d = dot && dot.getBoundingClientRect(), b = bar && bar.getBoundingClientRect();
    return {variation: g.dataset.variation, dot: d && [d.x + d.width / 2, d.width, d.height],
            bar: b && [b.x, b.width, b.height]};
  });
  return {metric: svg.closest('.metric').dataset.metric, width: box.width, height: box.height, marks};
})"""


@pytest.mark.browser
def test_the_report_opened_in_chromium_draws_its_charts_and_makes_no_request(tmp_path):
    from tests.collector import sdks
    if not Path(sdks.CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (make chromium)")
    from playwright.sync_api import sync_playwright
    report = tmp_path / "report.html"
    report.write_text(render(checkout_rows(srm=0.0004), []), encoding="utf-8")
    requests, errors = [], []
    sinkhole = sdks._Sinkhole()   # anything not loopback would be recorded here
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=sdks.CHROMIUM, headless=True,
                                                 args=sdks.CHROMIUM_ARGS + sinkhole.args())
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.on("request", lambda r: requests.append(r.url))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(report.as_uri(), wait_until="load", timeout=30_000)
                charts = page.evaluate(MEASURE)
                warning_box = page.evaluate("() => document.querySelector('.warning').getBoundingClientRect().height")
            finally:
                browser.close()
    finally:
        sinkhole.close()
    assert requests == [report.as_uri()], requests   # the document itself, nothing else
    assert not sinkhole.attempts and not errors, (sinkhole.attempts, errors)
    assert [c["metric"] for c in charts] == ["purchased", "revenue"]
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 50, chart
        for mark in chart["marks"]:
            if mark["variation"] == "3" and chart["metric"] == "revenue":
                assert mark["dot"] is None and mark["bar"] is None   # undefined lift
                continue
            assert mark["dot"][1] > 0 and mark["dot"][2] > 0 and mark["bar"][1] > 0 and mark["bar"][2] > 0, mark
    revenue = {m["variation"]: m for m in charts[1]["marks"]}
    assert revenue["2"]["dot"][0] < revenue["1"]["dot"][0]   # drawn on screen: -25% left of +15%
    assert warning_box > 0
