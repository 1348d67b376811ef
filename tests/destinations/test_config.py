"""Destination config checked at launch: one line naming the key, exit 2."""
import pytest

from pipeline import config
from pipeline.errors import UsageError
from pipeline.main import check_destinations
from tests.conftest import SAMPLE
from tests.unit.test_cli import error_lines, sluice

HOOK = "{name: crm, type: webhook, url: 'http://127.0.0.1:9/hook', allow_private_network: true"


@pytest.mark.parametrize("text, expected", [
    ("destinations:\n  - {name: crm, type: webhook}\n", "config: destinations[0].url: a webhook destination needs a url"),
    ("destinations:\n  - {name: q, type: pubsub, topic: events}\n",
     "config: destinations[0].topic: expected projects/PROJECT/topics/NAME"),
    ("destinations:\n  - {name: q, type: pubsub, topic: projects/demo-project/topics/t, url: 'https://x'}\n",
     "config: destinations[0].url: not a setting of a pubsub destination"),
    ("destinations:\n  - {name: crm, type: email, url: x}\n", "config: destinations[0].type: 'email' is not one of"),
    (f"destinations:\n  - {HOOK}}}\n  - {HOOK}}}\n", "config: destinations[1].name: 'crm' is used by an earlier"),
    (f"destinations:\n  - {HOOK}, batch: {{max_events: 0}}}}\n", "config: destinations[0].batch.max_events: 0 is less"),
    (f"destinations:\n  - {HOOK}, colour: red}}\n", "config: destinations[0].colour: unknown key"),
    (f"destinations:\n  - {HOOK}, body: event, batch: {{max_events: 5}}}}\n",
     "config: destinations[0].batch.max_events: body: event sends one event per request"),
    (f"destinations:\n  - {HOOK}, mapping: {{x: {{'@path': properties.x}}}}}}\n",
     "config: destinations[0].mapping.x.@path: a path is"),
    (f"destinations:\n  - {HOOK}, when: {{path: x, op: nearly}}}}\n", "config: destinations[0].when.op: 'nearly' is not"),
    (f"destinations:\n  - {HOOK}, headers: {{Authorization: {{env: A, file: B}}}}}}\n",
     "config: destinations[0].headers.Authorization"),
    (f"destinations:\n  - {HOOK}}}\nconsent:\n  destinations: {{crn: [ads]}}\n",
     "config: consent.destinations.crn: no destination of that name (destinations: crm)"),
])
def test_destination_mistakes_name_the_key(tmp_path, text, expected):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as raised:
        config.load(str(path))
    assert expected in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("destination, expected", [
    ("{name: crm, type: webhook, url: 'http://127.0.0.1:9/hook'}",
     "config: destinations[0].url: 127.0.0.1 resolves to 127.0.0.1, a private, loopback or link-local address; "
     "set allow_private_network: true"),
    ("{name: crm, type: webhook, url: 'https://169.254.169.254/latest'}", "169.254.169.254, a private"),
    ("{name: crm, type: webhook, url: 'https://[2002:a9fe:a9fe::1]/latest'}",
     "2002:a9fe:a9fe::1 (6to4 for 169.254.169.254), a private"),
    ("{name: crm, type: webhook, url: 'ftp://127.0.0.1/x', allow_private_network: true}",
     "config: destinations[0].url: 'ftp://127.0.0.1/x' is not an http:// or https:// URL"),
    (f"{HOOK}, signing_secret: {{env: SLUICE_NO_SUCH_SECRET}}}}",
     "config: destinations[0].signing_secret: environment variable SLUICE_NO_SUCH_SECRET is not set"),
    (f"{HOOK}, headers: {{Authorization: {{file: /nonexistent/token}}}}}}",
     "config: destinations[0].headers.Authorization: cannot read secret file /nonexistent/token"),
])
def test_unreachable_or_unsafe_destinations_stop_the_launch_with_exit_2(tmp_path, destination, expected):
    path = tmp_path / "sluice.yaml"
    path.write_text(f"destinations:\n  - {destination}\n")
    result = sluice("--input_files", str(SAMPLE), "--config", str(path), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert expected in line


def test_secret_values_never_reach_the_config_or_its_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "tok-never-shown")
    path = tmp_path / "sluice.yaml"
    path.write_text(f"destinations:\n  - {HOOK}, headers: {{Authorization: {{env: SLUICE_TEST_TOKEN}}}}}}\n")
    loaded = config.load(str(path))
    check_destinations(loaded)
    assert "tok-never-shown" not in repr(loaded)
