"""Generated tracking code compiles, and rejects a call that breaks the contract:
TypeScript with the project's pinned `tsc` (make test installs it), Python with mypy."""
import subprocess
import sys

import pytest

from pipeline import typegen
from tests.conftest import ROOT
from transforms.contracts.lint import check_directory

CONTRACTS, _ = check_directory(str(ROOT / "samples" / "contracts"))
TSC = ROOT / "node_modules" / ".bin" / "tsc"

TS_GOOD = """import { track, identify, group, page, screen, Analytics } from "./tracking";
declare const analytics: Analytics;
track(analytics, "Order Completed", { orderId: "o-1", total: 12.5, currency: "EUR",
  products: [{ productId: "sku-1", price: 12.5, quantity: 1 }] });
track(analytics, "Video Played", { videoId: "v-1", position: 3, playerSettings: { quality: "hd" } });
identify(analytics, "u-1", { email: "a@example.com", logins: 3 });
group(analytics, "g-1", { name: "Acme" });
page(analytics, "Home", { path: "/" });
screen(analytics, "Inbox", { path: "/inbox" }, "Mail");
"""
TS_BAD = {
    "wrong property type": ('track(analytics, "Order Completed", { orderId: "o-1", total: "12.5", currency: "EUR" });',
                            "TS2322"),
    "missing required property": ('track(analytics, "Order Completed", { orderId: "o-1", currency: "EUR" });', "TS2345"),
    "event not in the plan": ('track(analytics, "Order Refunded", { orderId: "o-1" });', "TS2345"),
    "value outside the enum": ('track(analytics, "Order Completed", { orderId: "o", total: 1, currency: "JPY" });',
                               "TS2322"),
}
PY_GOOD = """from tracking import Analytics, group, identify, page, screen, track_order_completed

def send(client: Analytics) -> None:
    track_order_completed(client, "u-1", {"orderId": "o-1", "total": 12.5, "currency": "EUR",
                                          "products": [{"productId": "sku-1", "price": 12, "quantity": 1}]})
    identify(client, "u-1", {"email": "a@example.com", "plan": "pro"})
    group(client, "u-1", "g-1", {"name": "Acme"})
    page(client, "u-1", "Home", {"path": "/"})
    screen(client, "u-1", "Inbox", {"path": "/inbox"}, category="Mail")
"""
PY_BAD = {
    "wrong property type": 'track_order_completed(client, "u-1", {"orderId": "o-1", "total": "12.5", "currency": "EUR"})',
    "missing required property": 'track_order_completed(client, "u-1", {"orderId": "o-1", "currency": "EUR"})',
    "value outside the enum": 'track_order_completed(client, "u-1", {"orderId": "o", "total": 1, "currency": "JPY"})',
    # What the helper took before it called segment-analytics-python's group(user_id, group_id, traits).
    "group without the user": 'group(client, "g-1", {"name": "Acme"})',
}


def tsc(directory):
    if not TSC.exists():
        pytest.fail("node_modules/.bin/tsc is missing: `make test` installs it (npm ci)")
    return subprocess.run([str(TSC), "--strict", "--noEmit", "--target", "es2020", "--module", "commonjs",
                           *sorted(str(p) for p in directory.glob("*.ts"))], capture_output=True, text=True)


def mypy(directory):
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null",
                           "--python-version", "3.11", "."], capture_output=True, text=True, cwd=directory)


@pytest.mark.slow
@pytest.mark.node
def test_typescript_output_compiles_and_rejects_wrong_calls(tmp_path):
    (tmp_path / "tracking.ts").write_text(typegen.generate(CONTRACTS, "typescript"))
    (tmp_path / "usage.ts").write_text(TS_GOOD)
    done = tsc(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for case, (line, code) in TS_BAD.items():
        (tmp_path / "usage.ts").write_text(TS_GOOD + line + "\n")
        done = tsc(tmp_path)
        assert done.returncode != 0 and code in done.stdout, (case, done.stdout)
        # the bad line, not the generated file
        assert f"usage.ts({len(TS_GOOD.splitlines()) + 1}," in done.stdout, (case, done.stdout)


@pytest.mark.slow
def test_python_output_type_checks_and_rejects_wrong_calls(tmp_path):
    (tmp_path / "tracking.py").write_text(typegen.generate(CONTRACTS, "python"))
    (tmp_path / "usage.py").write_text(PY_GOOD)
    done = mypy(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for case, line in PY_BAD.items():
        (tmp_path / "usage.py").write_text(PY_GOOD + "    " + line + "\n")
        done = mypy(tmp_path)
        assert done.returncode == 1 and f"usage.py:{len(PY_GOOD.splitlines()) + 1}: error" in done.stdout, \
            (case, done.stdout)
        assert "tracking.py" not in done.stdout, done.stdout


def test_names_that_are_not_identifiers_still_generate(tmp_path):
    from transforms.contracts.model import Contract
    schema = {"properties": {"properties": {"properties": {"first name": {"type": "string"}, "class": {"type": "integer"},
                                                           "tags": {"type": "array", "items": {"type": "string"}}},
                                            "additionalProperties": False}}}
    contracts = [Contract("track/_2fa_enabled", "x.json", schema, "2FA Enabled")]
    python = typegen.generate(contracts, "python")
    compile(python, "tracking.py", "exec")
    assert "'first name': str" in python and "def track_2fa_enabled" not in python
    typescript = typegen.generate(contracts, "typescript")
    assert '"first name"?: string' in typescript and "[key: string]" not in typescript.split("TrackEvents")[0]


def test_typegen_says_where_it_wrote_and_an_unwritable_out_is_one_line(tmp_path):
    def typegen_to(out):
        return subprocess.run([sys.executable, "-m", "pipeline.contracts", "typegen", "samples/contracts",
                               "--lang", "python", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    done = typegen_to(tmp_path / "tracking.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {tmp_path / 'tracking.py'}\n"
    assert (tmp_path / "tracking.py").read_text().startswith('"""Generated by `python -m pipeline.contracts typegen`')
    done = typegen_to(tmp_path / "missing" / "tracking.py")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"contracts: error: --out {tmp_path}/missing/tracking.py: cannot write it "
                                        "(No such file or directory)"]
