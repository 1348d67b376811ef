"""The Dataflow flex template (templates/) kept consistent with the code it launches.

Nothing here builds an image or calls Google: the Dockerfile, metadata.json and setup.py are
read as text and checked against the repository, the option parser and the installed
distributions; the entry file runs the real pipeline locally on FnApiRunner.
"""
import argparse
import ast
import fnmatch
import functools
import importlib.metadata
import importlib.util
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from packaging.requirements import Requirement
from setuptools import find_packages

from pipeline import options as options_module
from pipeline import sources
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
METADATA = json.loads((TEMPLATES / "metadata.json").read_text(encoding="utf-8"))
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}
SETUP_PY = (ROOT / "setup.py").read_text(encoding="utf-8")


# Graph building for Dataflow must not reach Google: tests/conftest.py's loopback_only refuses
# any name but a loopback one, and fails the test that tried.


# --- a. metadata.json against SluiceOptions -------------------------------------------------

def sluice_options() -> dict:
    """{dest: argparse action} for every --option SluiceOptions adds (what a user can set)."""
    parser = argparse.ArgumentParser(add_help=False)
    options_module.SluiceOptions._add_argparse_args(parser)
    return {action.dest: action for action in parser._actions if action.option_strings}


# Values each parameter's regexes must accept / reject: realistic ones, then obvious mistakes.
GOOD = {
    "input_files": ["gs://my-bucket/events/dt=2026-11-*/*.jsonl.gz", "gs://a-b/x.jsonl,gs://a-b/y.jsonl",
                    "tests/golden/extra-input.jsonl"],
    "input_subscription": ["projects/my-project/subscriptions/segment-events"],
    "input_topic": ["projects/my-project/topics/segment-events", "projects/example.com:my-project/topics/t-1"],
    "config": ["gs://my-bucket/sluice/sluice.yaml", "samples/sluice.yaml"],
    "udf": ["my_package.udfs:clean_event", "udfs:Cleaner.clean"],
    "warehouse": ["bigquery://my-project/segment_events", "bigquery://example.com:my-project/events"],
    "bigquery_endpoint": ["http://127.0.0.1:9050", "https://bigquery.internal.example/"],
    "bigquery_write_method": ["auto", "insert_all", "load"],
    "bigquery_location": ["US", "EU", "europe-west1", "northamerica-northeast1"],
    "dead_letter_topic": ["projects/my-project/topics/sluice-dead-letters"],
    "summary_path": ["gs://my-bucket/sluice/summary.json", "/tmp/summary.json"],
}
BAD = {
    "input_files": ["", "s3://bucket/events.jsonl", "http://example.com/events.jsonl", "gs://b/x.jsonl,"],
    "input_subscription": ["segment-events", "projects/my-project/topics/segment-events",
                           "projects/My_Project/subscriptions/segment-events"],
    "input_topic": ["segment-events", "projects/my-project/subscriptions/s-1", "projects/p/topics/t-1"],
    "config": ["", "s3://bucket/sluice.yaml"],
    "udf": ["my_package.udfs", "my-package:clean", ":clean", "udfs:"],
    # duckdb:/// is fine locally, but check_runner refuses it on Dataflow.
    "warehouse": ["duckdb:///sluice.duckdb", "bigquery://my-project", "bigquery://MyProject/events",
                  "bigquery://my-project/events-2026"],
    "bigquery_endpoint": ["127.0.0.1:9050", "http://127.0.0.1:9050/bigquery/v2", "ftp://host"],
    "bigquery_write_method": ["streaming", "LOAD", ""],
    "bigquery_location": ["", "europe west1", "EU;US"],
    "dead_letter_topic": ["sluice-dead-letters", "projects/my-project/topics/a/b"],
    "summary_path": ["", "s3://bucket/summary.json"],
}


def matches(parameter: dict, value: str) -> bool:
    """Dataflow requires a value to match the parameter's regexes (all anchored with ^...$)."""
    return all(re.fullmatch(regex, value) for regex in parameter.get("regexes", []))


def test_every_sluice_option_is_a_template_parameter_and_nothing_else_is():
    options = set(sluice_options())
    assert set(PARAMETERS) - options == set(), "metadata.json parameters that are not Sluice options"
    assert options - set(PARAMETERS) == set(), "Sluice options missing from templates/metadata.json"
    assert len(METADATA["parameters"]) == len(PARAMETERS), "a parameter is listed twice"


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_each_parameter_is_described_and_reaches_sluice_as_name_equals_value(name):
    parameter = PARAMETERS[name]
    assert parameter["label"].strip() and parameter["helpText"].strip()
    assert isinstance(parameter.get("isOptional", False), bool)
    assert parameter.get("paramType", "TEXT") in {"TEXT", "GCS_READ_FILE", "GCS_WRITE_FILE", "PUBSUB_TOPIC",
                                                  "PUBSUB_SUBSCRIPTION"}
    for regex in parameter.get("regexes", []):
        assert regex.startswith("^") and regex.endswith("$"), f"{name}: anchor {regex!r}"
        re.compile(regex)
    # The launcher passes --name=value: Sluice's own parser must take it and keep the value.
    value = GOOD[name][0]
    sluice, _ = options_module.parse_args([f"--{name}={value}"])
    assert getattr(sluice, name) == value


def test_only_the_warehouse_is_required_since_the_default_duckdb_cannot_run_on_dataflow():
    assert [name for name, p in PARAMETERS.items() if not p.get("isOptional", False)] == ["warehouse"]
    assert not matches(PARAMETERS["warehouse"], options_module.DEFAULT_WAREHOUSE)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_regexes_accept_realistic_values_and_reject_mistakes(name):
    parameter = PARAMETERS[name]
    assert parameter.get("regexes"), f"{name}: no regexes; the launch would pass any value through"
    for value in GOOD[name]:
        assert matches(parameter, value), f"{name}: rejects {value!r}"
    for value in BAD[name]:
        assert not matches(parameter, value), f"{name}: accepts {value!r}"
    example = re.search(r"Example: (\S+)", parameter["helpText"])
    if example:
        assert matches(parameter, example.group(1)), f"{name}: its own example fails its regexes"


def test_regexes_say_what_the_code_says():
    """Where Sluice checks a value itself, the template's regex is the same rule."""
    assert PARAMETERS["warehouse"]["regexes"] == ["^" + options_module._BIGQUERY_URL.pattern + "$"]
    choices = sluice_options()["bigquery_write_method"].choices
    assert PARAMETERS["bigquery_write_method"]["regexes"] == ["^(" + "|".join(choices) + ")$"]
    checks = {
        "input_subscription": lambda v: sources.check_pubsub(v, None),
        "input_topic": lambda v: sources.check_pubsub(None, v),
        "dead_letter_topic": lambda v: sources.check_topic("dead_letter_topic", v),
        "warehouse": warehouse_on_dataflow,
        "bigquery_endpoint": options_module.check_endpoint,
    }
    for name, check in checks.items():
        for value in GOOD[name]:
            check(value)
        for value in BAD[name]:
            with pytest.raises(UsageError):
                check(value)


def warehouse_on_dataflow(url: str) -> None:
    """What main.check() does with --warehouse when the runner is Dataflow."""
    options_module.check_runner(PipelineOptions(["--runner=DataflowRunner"]), options_module.parse_warehouse_url(url),
                                "DataflowRunner")


# --- b. the Dockerfile against the repository and setup.py ------------------------------------

def dockerfile() -> list:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (TEMPLATES / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def docker_state() -> dict:
    """What the Dockerfile sets up: images, copies (repo path -> image path), env, entrypoint."""
    state = {"images": [], "copies": [], "env": {}, "entrypoint": None}
    variables, workdir = {}, "/"

    def expand(text):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), text)
    for instruction, arguments in dockerfile():
        instruction = instruction.upper()
        if instruction == "FROM":
            state["images"].append(arguments.split()[0])
        elif instruction in ("ARG", "ENV"):
            name, _, value = arguments.partition("=")
            variables[name] = expand(value.strip('"'))
            if instruction == "ENV":
                state["env"][name] = variables[name]
        elif instruction == "WORKDIR":
            workdir = posixpath.join(workdir, expand(arguments))
        elif instruction == "COPY":
            words = shlex.split(expand(arguments))
            image = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            paths = [w for w in words if not w.startswith("--")]
            if image:
                state["images"].append(image)
                continue
            *sources_, destination = paths
            destination = posixpath.join(workdir, destination)
            for source in sources_:
                into_folder = destination.endswith("/") or len(sources_) > 1
                if (ROOT / source).is_dir() or not into_folder:
                    state["copies"].append((source.rstrip("/"), destination.rstrip("/")))
                else:
                    state["copies"].append((source, posixpath.join(destination, posixpath.basename(source))))
        elif instruction == "ENTRYPOINT":
            state["entrypoint"] = json.loads(arguments)
    return state


def repo_path_of(image_path: str):
    """The repository file the Dockerfile copies to `image_path`, or None."""
    for source, destination in docker_state()["copies"]:
        if image_path == destination:
            return ROOT / source
        if image_path.startswith(destination + "/") and (ROOT / source).is_dir():
            return ROOT / source / image_path[len(destination) + 1:]
    return None


def install_requires() -> list:
    tree = ast.parse(SETUP_PY)
    return next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and any(getattr(target, "id", None) == "INSTALL_REQUIRES" for target in node.targets))


def pinned_version(distribution: str) -> str:
    for line in install_requires():
        requirement = Requirement(line)
        if canonical(requirement.name) == canonical(distribution):
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{line}: pin it exactly"
            return specifier.version
    raise AssertionError(f"{distribution} is not in setup.py's INSTALL_REQUIRES")


def test_the_entry_file_the_launcher_runs_is_the_repository_entry_file():
    py_file = docker_state()["env"]["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    source = repo_path_of(py_file)
    assert source is not None, f"nothing in the Dockerfile copies {py_file}"
    assert source.is_file(), f"{py_file} comes from {source}, which does not exist"
    assert source == TEMPLATES / "main.py"
    # Its folder holds no package copy, so it imports the installed package (as the workers do).
    folder = posixpath.dirname(py_file)
    assert not [d for _, d in docker_state()["copies"] if posixpath.dirname(d) == folder and d != py_file]


def test_copied_files_exist_and_the_dockerignore_lets_them_into_the_context():
    allowed = [line[1:].rstrip("/") for line in (TEMPLATES / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = docker_state()["copies"]
    assert copies
    for source, _ in copies:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is dockerignored"
    # What `pip install .` needs: setup.py, constraints.txt, the files setup.py reads, the packages.
    copied = {source.split("/")[0] for source, _ in copies}
    read_by_setup = {path.split("/")[0] for path in re.findall(r'HERE / "([^"]+)"', SETUP_PY)}
    needed = {"setup.py", "constraints.txt"} | read_by_setup | top_level_packages()
    assert needed - copied == set(), "pip install . in the image needs these too"


def test_images_are_pinned_and_match_setup_py_and_the_python_the_tests_run_on():
    images = docker_state()["images"]
    for image in images:
        assert ("@sha256:" in image or re.search(r":[^:/]*\d[^:/]*$", image)) and not image.endswith(":latest"), \
            f"{image}: pin an exact version tag or digest"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (sdk,) = only(re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", image) for image in images)
    assert sdk.group(2) == pinned_version("apache-beam"), "the SDK image's Beam differs from setup.py's pin"
    assert sdk.group(1) == python, "the SDK image's Python differs from the one the tests ran on"
    (launcher,) = only(re.search(r"/python(\d)(\d+)-template-launcher-base[:@]", image) for image in images)
    assert f"{launcher.group(1)}.{launcher.group(2)}" == python, "the launcher image is for another Python"
    requires_python = re.search(r'python_requires=">=(\d+\.\d+)"', SETUP_PY).group(1)
    assert tuple(map(int, python.split("."))) >= tuple(map(int, requires_python.split(".")))


def only(found) -> list:
    found = [match for match in found if match]
    assert len(found) == 1, f"expected one such image in the Dockerfile, found {len(found)}"
    return found


def test_the_image_boots_as_a_beam_worker_and_carries_the_launcher():
    state = docker_state()
    assert state["entrypoint"] == ["/opt/apache/beam/boot"], "workers start the image's entrypoint"
    assert "/opt/google/dataflow/python_template_launcher" in (TEMPLATES / "Dockerfile").read_text()


# --- c. the entry file, as the launcher calls it -----------------------------------------------

@pytest.mark.slow
def test_the_entry_file_runs_the_pipeline_from_template_style_parameters(tmp_path):
    summary_path = tmp_path / "s.json"
    process = subprocess.run(
        [sys.executable, "templates/main.py", "--input_files=tests/golden/extra-input.jsonl",
         f"--warehouse=duckdb:///{tmp_path}/w.duckdb", f"--summary_path={summary_path}"],
        cwd=ROOT, env=dict(os.environ, NO_GCE_CHECK="true"), capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["conservation"]["holds"] and summary["stored"] > 0, summary


def launch_arguments() -> list:
    """What a launch passes: Beam's options for Dataflow, then the template's parameters."""
    return ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
            "--temp_location=gs://sluice-staging/tmp", "--staging_location=gs://sluice-staging/staging",
            "--template_location=gs://sluice-staging/staging/template_launches/1/job_object",
            "--sdk_container_image=us-central1-docker.pkg.dev/my-project/sluice/sluice:1",
            "--job_name=sluice-1", "--labels=team=data", "--max_num_workers=4",
            "--input_subscription=projects/my-project/subscriptions/segment-events",
            "--warehouse=bigquery://my-project/segment_events", "--bigquery_location=EU",
            "--dead_letter_topic=projects/my-project/topics/sluice-dead-letters"]


class Submitted(Exception):
    """Raised in place of DataflowRunner's submission: the graph got that far."""


class LaunchWarehouse:
    """Stands in for the warehouse the launcher opens (pipeline.main.open_backend): there is no
    Google here. Records what the launch asked of it."""

    def __init__(self):
        self.opened, self.ensured, self.closed = [], 0, 0

    def __call__(self, settings):
        self.opened.append(settings.url)
        return self

    def ensure_dead_letters(self):
        self.ensured += 1

    def close(self):
        self.closed += 1


@pytest.fixture
def launch_warehouse(monkeypatch):
    import pipeline.main
    import pipeline.sources
    warehouse = LaunchWarehouse()
    monkeypatch.setattr(pipeline.main, "open_backend", warehouse)
    # Nor Pub/Sub: the launch's existence checks are recorded (the emulator tests run them for real).
    warehouse.checked = []
    monkeypatch.setattr(pipeline.sources, "check_exists", lambda option, path: warehouse.checked.append(option))
    return warehouse


def test_a_dataflow_launch_builds_a_streaming_graph_that_serializes(monkeypatch, launch_warehouse):
    """Up to the runner, offline: Sluice accepts the launch's arguments, builds the graph for
    DataflowRunner, and the graph turns into the runner API proto (every DoFn pickles)."""
    from pipeline.main import main
    seen = {}

    def run(pipeline, *args, **kwargs):
        seen["runner"] = type(pipeline.runner).__name__
        seen["options"] = pipeline._options
        pipeline.to_runner_api()
        raise Submitted()
    # Beam checks the gs:// buckets with Google when the pipeline is created; there is no Google here.
    monkeypatch.setattr(GoogleCloudOptions, "validate", lambda self, validator: [])
    monkeypatch.setattr(beam.Pipeline, "run", run)
    with pytest.raises(Submitted):
        main(launch_arguments())
    assert seen["runner"] == "DataflowRunner"
    assert seen["options"].view_as(StandardOptions).streaming  # Pub/Sub input: streaming
    assert seen["options"].get_all_options()["sdk_container_image"].endswith("/sluice:1")


def test_a_template_launch_exits_0_once_the_runner_has_written_the_job(monkeypatch, launch_warehouse):
    from apache_beam.runners.dataflow.dataflow_metrics import DataflowMetrics
    from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult

    from pipeline.main import main

    def run(pipeline, *args, **kwargs):
        # What DataflowRunner.run_pipeline returns when --template_location is set.
        result = DataflowPipelineResult(None, pipeline.runner, pipeline._options)
        result.metric_results = DataflowMetrics(None, result, None)
        return result
    monkeypatch.setattr(GoogleCloudOptions, "validate", lambda self, validator: [])
    monkeypatch.setattr(beam.Pipeline, "run", run)
    assert main(launch_arguments()) == 0
    # The launcher, not a worker, makes the dead-letter table (and its view) exist from the
    # first run, once: a template launch too, although it runs nothing of the job here.
    assert launch_warehouse.opened == ["bigquery://my-project/segment_events"] and launch_warehouse.ensured == 1
    assert launch_warehouse.closed == 1
    assert launch_warehouse.checked == ["input_subscription", "dead_letter_topic"]  # before the job is written


# --- d. setup.py installs what a worker imports ------------------------------------------------

def find_packages_call() -> dict:
    """The keyword arguments of setup.py's find_packages(...) call."""
    call = next(node for node in ast.walk(ast.parse(SETUP_PY)) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "find_packages")
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def setup_keyword(name: str):
    call = next(node for node in ast.walk(ast.parse(SETUP_PY)) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == name)


def installed_packages() -> set:
    return set(find_packages(where=str(ROOT), **find_packages_call()))


def top_level_packages() -> set:
    return {package.split(".")[0] for package in installed_packages()}


def source_folders() -> list:
    """Every folder of the installed trees that holds Python or data files."""
    return sorted({path.parent for top in top_level_packages() for path in (ROOT / top).rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts})


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(requirements: list) -> set:
    """Canonical names of the distributions `requirements` pull in, through installed metadata."""
    seen, todo = set(), [(Requirement(line), "") for line in requirements]
    while todo:
        requirement, parent_extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": parent_extra}):
            continue
        key = (canonical(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing imported can come from it either
        for extra in {""} | set(requirement.extras):
            todo.extend((Requirement(line), extra) for line in requires)
    return {name for name, _ in seen}


def imports() -> list:
    """[(names to try, file)] for each absolute import under the installed packages. For
    `from a import b` b may be a module (needed to tell a namespace package's parts apart:
    google.cloud.bigquery from google.cloud.storage) or an attribute of a, so a.b comes first."""
    found = []
    for top in top_level_packages():
        for path in (ROOT / top).rglob("*.py"):
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found += [((alias.name,), where) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found += [((f"{node.module}.{alias.name}", node.module), where) for alias in node.names]
    return found


@functools.cache
def packages_distributions() -> dict:
    """importlib.metadata's, read once: it reads every installed distribution's metadata, and
    providers() asks for each of some hundred imports."""
    return importlib.metadata.packages_distributions()


def providers(module: str) -> set:
    """Canonical names of the distributions that install `module` (empty if it is not a module)."""
    top = module.split(".")[0]
    candidates = set(packages_distributions().get(top, []))
    if len(candidates) <= 1:
        return {canonical(name) for name in candidates}
    try:  # a namespace package shared by several distributions: find the one owning the file
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return set()
    if spec is None or not spec.origin or spec.origin == "namespace":
        return set()
    origin = Path(spec.origin).resolve()
    return {canonical(name) for name in candidates if origin in installed_files(name)}


@functools.cache
def installed_files(name: str) -> frozenset:
    """The resolved paths of the files distribution `name` installed (read once a name: looking
    the distribution up again for each of its files took 10 s of the test)."""
    distribution = importlib.metadata.distribution(name)
    return frozenset(Path(distribution.locate_file(f)).resolve() for f in distribution.files or [])


def test_every_third_party_import_comes_with_setup_py_install_requires():
    closure = requirement_closure(install_requires())
    ours, missing = top_level_packages(), {}
    for names, where in imports():
        top = names[0].split(".")[0]
        if top in sys.stdlib_module_names or top in ours:
            continue
        owners = next((found for found in map(providers, names) if found), set())
        if not owners & closure:
            missing.setdefault(names[0], (sorted(owners) or ["<not installed>"], []))[1].append(where)
    assert not missing, f"imported on workers but not installed by setup.py's INSTALL_REQUIRES: {missing}"


def test_find_packages_installs_every_package_folder():
    installed = installed_packages()
    for folder in source_folders():
        if not any(path.suffix == ".py" for path in folder.iterdir()):
            continue
        assert (folder / "__init__.py").exists(), f"{folder.relative_to(ROOT)}: add __init__.py or workers miss it"
        package = ".".join(folder.relative_to(ROOT).parts)
        assert package in installed, f"setup.py's find_packages leaves out {package}"
    assert {"pipeline", "transforms", "schemas"} <= installed


def test_every_data_file_in_the_packages_is_package_data():
    package_data = setup_keyword("package_data")
    for folder in source_folders():
        package = ".".join(folder.relative_to(ROOT).parts)
        for path in folder.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                assert any(fnmatch.fnmatch(path.name, pattern) for pattern in package_data.get(package, [])), \
                    f"{path.relative_to(ROOT)} is not package data: workers would not have it"
    assert "*.json" in package_data["schemas"]
