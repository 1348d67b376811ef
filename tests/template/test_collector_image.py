"""The collector's Cloud Run image (templates/collector/) kept consistent with the repository.

Nothing here builds an image: the Dockerfile is read as text and checked against setup.py, the
repository and `serve`'s own option parser, and its entrypoint script is run as it is written
(sh, with Cloud Run's environment) against a real collector on 127.0.0.1.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import serve
from tests.collector.serving import Collector, basic, request, spool_lines, write_config

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "templates" / "collector"
SETUP_PY = (ROOT / "setup.py").read_text(encoding="utf-8")
TOPIC = "pubsub://projects/my-project/topics/segment-events"


def instructions() -> list:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (FOLDER / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(word.upper(), rest) for word, rest in (line.split(None, 1) for line in lines
                                                     if line and not line.startswith("#"))]


def of(kind: str) -> list:
    return [arguments for instruction, arguments in instructions() if instruction == kind]


def env() -> dict:
    """ENV name=value pairs (several on one line allowed, as Docker does)."""
    return dict(word.split("=", 1) for arguments in of("ENV") for word in shlex.split(arguments))


def entrypoint() -> list:
    (arguments,) = of("ENTRYPOINT")
    return json.loads(arguments)


def test_the_base_image_is_a_slim_python_of_the_version_the_tests_run_on():
    (image,) = of("FROM")
    found = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?(@sha256:[0-9a-f]{64})?", image)
    assert found, f"FROM {image}: expected python:3.X[-.N]-slim[-DEBIAN][@sha256:...]"
    version = (int(found.group(1)), int(found.group(2)))
    assert version == sys.version_info[:2], f"the image runs Python {version}, the tests {sys.version_info[:2]}"
    required = tuple(map(int, re.search(r'python_requires=">=(\d+)\.(\d+)"', SETUP_PY).groups()))
    assert version >= required, f"setup.py requires Python {required}"


def test_it_installs_the_package_with_the_pinned_versions_and_runs_as_no_root():
    runs = " && ".join(of("RUN"))
    assert re.search(r"pip install [^&]*-c constraints\.txt \.(\s|$)", runs), runs
    assert not re.search(r"pip install [^&]*(-e|--editable)\b", runs), "an editable install needs the sources"
    (user,) = of("USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:")), f"USER {user}"
    assert instructions().index(("USER", user)) > max(i for i, (kind, _) in enumerate(instructions()) if kind == "RUN")


def test_copied_paths_exist_and_cover_setup_py_packages_and_the_dockerignore_lets_them_in():
    copied = [word.rstrip("/") for arguments in of("COPY") for word in shlex.split(arguments)[:-1]]
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    packages = re.search(r"find_packages\(include=\[([^\]]*)\]", SETUP_PY).group(1)
    tops = {name.split(".")[0] for name in re.findall(r'"([\w.*]+)"', packages)}
    assert tops == {"pipeline", "collector", "transforms", "analysis", "schemas"}, tops
    assert tops <= set(copied), (tops, copied)
    # setup.py reads these when it runs
    assert {"setup.py", "README.md", "constraints.txt"} <= set(copied)
    lines = (FOLDER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in lines, "an allow-list: everything else stays out of the context"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert set(copied) == allowed, f"copied but ignored: {set(copied) - allowed}; allowed, never copied: " \
                                   f"{allowed - set(copied)}"


def test_the_entrypoint_is_exec_python_m_pipeline_serve_with_options_serve_accepts():
    command = entrypoint()
    assert command[:2] == ["sh", "-c"] and command[2].startswith("exec "), "exec: the collector must be PID 1"
    values = {**env(), "PORT": "8080", "SLUICE_SINK": TOPIC}
    expanded = re.sub(r"\$\{(\w+)(?::[-?][^}]*)?\}|\$(\w+)",
                      lambda m: values[m.group(1) or m.group(2)], command[2].replace('"$@"', ""))
    argv = shlex.split(expanded)
    assert argv[:5] == ["exec", "python", "-m", "pipeline", "serve"], argv
    args = serve.parse_args(argv[5:])
    assert (args.host, args.port, args.sink, args.config) == ("0.0.0.0", 8080, TOPIC, "/config/sluice.yaml")
    assert args.warehouse is None, "Cloud Run's disk is memory: no embedded warehouse"


@pytest.fixture
def entrypoint_collector(tmp_path):
    """The entrypoint's script run by sh as the image would, with Cloud Run's environment; its
    --host/--port overridden to 127.0.0.1:0 by arguments appended as `--args` would be."""
    config = write_config(tmp_path, sources=[{"name": "server", "write_key": {"env": "SLUICE_KEY_SERVER"}}])
    collector = Collector([], tmp_path, env={"PORT": "8080", "SLUICE_SINK": str(tmp_path / "spool"),
                                             "SLUICE_CONFIG": str(config), "SLUICE_KEY_SERVER": "key-from-secret",
                                             "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
                          command=entrypoint())
    yield collector
    collector.kill()


def test_the_entrypoint_serves_and_sigterm_reaches_the_collector(entrypoint_collector, tmp_path):
    """A real run of the script: the write key comes from the environment (Secret Manager's
    `--set-secrets NAME=secret:latest`), the event is kept, and SIGTERM to the container's
    process ends the collector itself with 0 after its drain: without `exec` sh would be PID 1
    and die by the signal, leaving the collector undrained."""
    collector = entrypoint_collector.wait_ready()
    event = {"type": "track", "event": "Signed Up", "userId": "u-1", "messageId": "m-entrypoint-1"}
    status, _, _ = request(collector.url + "/v1/track", "POST", json.dumps(event).encode(),
                           {"Authorization": basic("key-from-secret"), "Content-Type": "application/json"})
    assert status == 200
    assert subprocess.run(["ps", "-o", "comm=", "-p", str(collector.pid)], capture_output=True,
                          text=True).stdout.strip().startswith("python"), "sh still runs: exec is missing"
    assert collector.stop() == 0, collector.log()
    assert "collector stopped" in collector.log()
    assert [r["batch"][0]["messageId"] for r in spool_lines(tmp_path / "spool")] == ["m-entrypoint-1"]


def test_the_entrypoint_without_a_sink_says_what_to_set(tmp_path):
    process = subprocess.run(entrypoint(), env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert process.returncode != 0 and "set SLUICE_SINK to pubsub://" in process.stderr, process.stderr
