"""The sources: and collector: config sections: typed, checked, write keys read only when the
collector starts; every mistake one line naming the key path (exit 2 on the command line)."""
import pytest
import yaml

from collector.settings import CollectorLimits, CollectorSettings, RateLimit, Source
from pipeline import config
from pipeline.errors import UsageError
from tests.conftest import ROOT, SAMPLE
from tests.unit.test_cli import error_lines, sluice, sluice_process
from transforms.destinations.secrets import SecretRef

FULL = """
sources:
  - name: web
    write_key: wk_web_plain
    rate_limit: {events_per_second: 5, burst: 20}
    allowed_origins: ["https://shop.example.com"]
  - name: backend
    write_key: {env: SLUICE_TEST_BACKEND_KEY}
    enabled: false
  - name: mobile
    write_key: {file: KEYFILE}
collector:
  max_event_bytes: 1000
  max_request_bytes: 100000
  max_batch_events: 10
  trusted_proxies: [10.0.0.0/8, 192.0.2.1, "2001:db8::/32"]
  public_url: https://collect.example.com/
"""


def typed(text: str):
    return config.validate(yaml.safe_load(text))


def test_defaults_without_the_sections():
    assert config.validate({}).collector == CollectorSettings((), CollectorLimits())
    assert config.Config().collector == CollectorSettings()


def test_sections_are_typed_and_secrets_read_only_when_resolved(tmp_path):
    keyfile = tmp_path / "mobile.key"
    keyfile.write_text("wk_mobile_from_file\n")
    settings = typed(FULL.replace("KEYFILE", str(keyfile))).collector
    assert settings.limits == CollectorLimits(1000, 100000, 10, ("10.0.0.0/8", "192.0.2.1", "2001:db8::/32"))
    web, backend, mobile = settings.sources
    assert web == Source("web", "wk_web_plain", True, RateLimit(5.0, 20), ("https://shop.example.com",))
    assert backend.write_key == SecretRef("SLUICE_TEST_BACKEND_KEY") and backend.enabled is False
    assert backend.rate_limit == RateLimit() and backend.allowed_origins == ("*",)
    assert isinstance(mobile.write_key, SecretRef)
    resolved = config.resolve_collector(settings, {"SLUICE_TEST_BACKEND_KEY": "wk_backend_env"})
    assert [s.write_key for s in resolved.sources] == ["wk_web_plain", "wk_backend_env", "wk_mobile_from_file"]
    assert resolved.limits == settings.limits
    assert resolved.public_url == "https://collect.example.com"   # apiHost gets "/v1" appended


@pytest.mark.parametrize("text, environ, expected", [
    ("sources:\n  - {name: web, write_key: a}\n  - {name: web, write_key: b}\n", {},
     "config: sources[1].name: web is already the name of sources[0]"),
    ("sources:\n  - {name: a, write_key: same}\n  - {name: b, write_key: same}\n", {},
     "config: sources[1].write_key: the same write key as sources[0]"),
    ("sources:\n  - {name: a, write_key: {env: K}}\n  - {name: b, write_key: {env: K}}\n", {"K": "x"},
     "config: sources[1].write_key: the same write key as sources[0]"),
    ("sources:\n  - {name: a, write_key: wk_same}\n  - {name: b, write_key: {env: K}}\n", {"K": "wk_same"},
     "config: sources[1].write_key: the same write key as sources[0]"),
    ("sources:\n  - {name: a, write_key: {env: SLUICE_TEST_UNSET_KEY}}\n", {},
     "config: sources[0].write_key: environment variable SLUICE_TEST_UNSET_KEY is not set"),
    ("sources:\n  - {name: a, write_key: x}\n  - {name: b, write_key: {file: /nonexistent/key}}\n", {},
     "config: sources[1].write_key: cannot read secret file /nonexistent/key"),
    ("sources:\n  - {name: a, write_key: x, colour: red}\n", {}, "config: sources[0].colour: unknown key"),
    ("sources:\n  - {name: a}\n", {}, "config: sources[0]: 'write_key' is a required property"),
    ("sources:\n  - {name: 'has space', write_key: x}\n", {}, "config: sources[0].name: 'has space' does not match"),
    ("sources:\n  - {name: a, write_key: ''}\n", {}, "config: sources[0].write_key: must be a non-empty string"),
    ("sources:\n  - {name: a, write_key: {env: A, file: b}}\n", {}, "config: sources[0].write_key: must be"),
    ("sources:\n  - {name: a, write_key: x, rate_limit: {events_per_second: 0}}\n", {},
     "config: sources[0].rate_limit.events_per_second: 0 is less than or equal to the minimum of 0"),
    ("sources:\n  - {name: a, write_key: x, rate_limit: {burst: 0}}\n", {},
     "config: sources[0].rate_limit.burst: 0 is less than the minimum of 1"),
    ("sources:\n  - {name: a, write_key: x, allowed_origins: []}\n", {},
     "config: sources[0].allowed_origins: [] should be non-empty"),
    ("sources: {name: a}\n", {}, "config: sources: the value is not of type 'array' (not shown"),
    ("collector:\n  max_events: 3\n", {}, "config: collector.max_events: unknown key"),
    ("collector:\n  public_url: collect.example.com\n", {}, "config: collector.public_url: the value does not match"),
    ("collector:\n  public_url: 'https://collect.example.com?x=1'\n", {}, "config: collector.public_url: the value"),
    ("collector:\n  max_request_bytes: 100\n", {},
     "config: collector.max_request_bytes: must not be smaller than collector.max_event_bytes"),
    ("collector:\n  max_batch_events: 0\n", {}, "config: collector.max_batch_events: 0 is less than the minimum of 1"),
    ("collector:\n  trusted_proxies: [10.0.0.0/8, proxy.internal]\n", {},
     "config: collector.trusted_proxies[1]: 'proxy.internal' is not an IP address or network (CIDR)"),
])
def test_mistakes_name_the_key_path(text, environ, expected):
    with pytest.raises(UsageError) as info:
        config.resolve_collector(typed(text).collector, environ)
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize("value", ["12345678", "[wk_in_a_list]", "{env: A, file: wk_secret_value}"])
def test_a_write_key_is_never_echoed_in_an_error(value):
    with pytest.raises(UsageError) as info:
        typed(f"sources:\n  - {{name: a, write_key: {value}}}\n")
    assert "12345678" not in str(info.value) and "wk_" not in str(info.value)


def test_a_clash_with_a_read_secret_never_shows_the_value():
    text = "sources:\n  - {name: a, write_key: wk_plain_secret}\n  - {name: b, write_key: {env: K}}\n"
    settings = typed(text).collector
    with pytest.raises(UsageError) as info:
        config.resolve_collector(settings, {"K": "wk_plain_secret"})
    assert "wk_plain_secret" not in str(info.value)


def test_a_batch_run_does_not_need_the_collectors_secrets(monkeypatch):
    monkeypatch.delenv("SLUICE_TEST_UNSET_KEY", raising=False)
    settings = typed("sources:\n  - {name: a, write_key: {env: SLUICE_TEST_UNSET_KEY}}\n").collector
    assert settings.sources[0].write_key == SecretRef("SLUICE_TEST_UNSET_KEY")


def test_a_bad_sources_section_exits_2_with_one_line(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text("sources:\n  - {name: web, write_key: a}\n  - {name: web, write_key: b}\n")
    result = sluice("--input_files", str(SAMPLE), "--config", str(path))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line == "sluice: error: config: sources[1].name: web is already the name of sources[0]"


@pytest.mark.parametrize("text", [
    "sources: {name: web, write_key: SECRETKEY123}\n",        # a mapping where the list belongs
    "sources: [[web, SECRETKEY123]]\n",                       # a list where each source's mapping belongs
    "sources: [SECRETKEY123]\n",
    "sources:\n  - {name: web, write_key: x, rate_limit: [SECRETKEY123]}\n",
    "destinations:\n  - {name: d, type: webhook, url: 'https://h.example/SECRETKEY123', headers: [SECRETKEY123]}\n",
    "debugger: {token: SECRETKEY123}\n",                    # the token itself where a secret reference belongs
    "debugger: {token: {env: [SECRETKEY123]}}\n",
])
def test_a_misplaced_secret_is_never_echoed_in_the_one_line_error(tmp_path, text):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    result = sluice("--input_files", str(SAMPLE), "--config", str(path))
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line.startswith("sluice: error: config: ") and "not shown" in line, line
    assert "SECRETKEY123" not in result.stderr + result.stdout


def test_the_debugger_section_is_typed_and_its_token_read_only_when_resolved(tmp_path, monkeypatch):
    """pipeline/config_file.py types the `debugger:` section with the collector's (serve --sink
    reads no more than that module); the token, like a write key, is read when the collector starts."""
    from collector.debugger.settings import DebuggerSettings
    from pipeline import config_file
    tokenfile = tmp_path / "debugger.token"
    tokenfile.write_text("t0k3n-from-file\n")
    document = yaml.safe_load(f"sources: [{{name: web, write_key: wk}}]\n"
                              f"debugger: {{enabled: true, token: {{file: {tokenfile}}}, max_events_per_source: 50,"
                              f" max_events_per_second: 5, max_payload_bytes: 1024}}\n")
    settings = config_file.collector_section(document)
    assert settings.debugger == DebuggerSettings(True, SecretRef(file=str(tokenfile)), 50, 5.0, 1024)
    assert config.validate(document).collector == settings
    assert config_file.resolve_collector(settings).debugger.token == "t0k3n-from-file"
    monkeypatch.delenv("SLUICE_TEST_UNSET_DEBUGGER_TOKEN", raising=False)
    unset = config_file.collector_section({"debugger": {"token": {"env": "SLUICE_TEST_UNSET_DEBUGGER_TOKEN"}}})
    with pytest.raises(UsageError, match=r"^config: debugger\.token: environment variable "
                                         r"SLUICE_TEST_UNSET_DEBUGGER_TOKEN is not set"):
        config_file.resolve_collector(unset)
    assert config_file.collector_section({}).debugger == DebuggerSettings()


def test_the_sample_config_reads(monkeypatch):
    monkeypatch.setenv("SLUICE_HASH_SALT", "test-salt")
    loaded = config.load(str(ROOT / "samples" / "sluice.yaml"))
    assert loaded.collector == CollectorSettings((), CollectorLimits())


def test_the_commented_sample_source_is_valid():
    """The example in samples/sluice.yaml, uncommented, is a valid config."""
    text = (ROOT / "samples" / "sluice.yaml").read_text(encoding="utf-8")
    start = text.index("sources: []")
    block = text[start:].splitlines()
    source = ["sources:"] + [line[1:] for line in block[1:] if line.startswith("#")]
    settings = config.validate(yaml.safe_load("\n".join(source))).collector
    assert settings.sources[0].name == "web"
    resolved = config.resolve_collector(settings, {"SLUICE_WEB_KEY": "wk_web"})
    assert resolved.sources[0].write_key == "wk_web"


def test_serve_with_an_unset_write_key_variable_exits_2_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SLUICE_TEST_UNSET_WEB_KEY", raising=False)
    path = tmp_path / "sluice.yaml"
    path.write_text("sources:\n  - {name: web, write_key: x}\n"
                    "  - {name: app, write_key: {env: SLUICE_TEST_UNSET_WEB_KEY}}\n")
    result = sluice_process("serve", "--config", str(path), "--sink", str(tmp_path / "spool"), "--port", "0")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert line == ("sluice: error: config: sources[1].write_key: environment variable SLUICE_TEST_UNSET_WEB_KEY "
                    "is not set (or empty)")
