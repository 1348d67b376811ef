"""What the docs' step-by-step runs write in the working tree is ignored by git, so following
them leaves `git status` clean (the streaming walkthrough's summary file showed up untracked)."""
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

WALKTHROUGHS = [("docs/streaming.md", "## A local run, step by step")]


def written_paths(doc: str, section: str) -> list:
    """Relative paths the commands of the doc's step-by-step section write: --summary_path and
    duckdb:/// files."""
    text = (ROOT / doc).read_text()
    body = text[text.index(section) + len(section):]
    body = body[:body.find("\n## ")] if "\n## " in body else body
    commands = [line for line in body.splitlines() if line.startswith("    ")]
    found = []
    for line in commands:
        found += re.findall(r"--summary_path[ =](\S+)", line) + re.findall(r"duckdb:///([^/\s]\S*)", line)
    return [path for path in found if "://" not in path]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("doc, section", WALKTHROUGHS)
def test_files_a_walkthrough_writes_are_ignored_by_git(doc, section):
    paths = written_paths(doc, section)
    assert "stream.json" in paths and "stream.duckdb" in paths  # the parse found the walkthrough's files
    for path in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{doc} writes {path}, which git does not ignore"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_the_walkthrough_summary_is_ignored_only_where_it_is_written():
    # the walkthrough runs at the top of the tree; a stream.json elsewhere may be a project's file
    assert subprocess.run(["git", "check-ignore", "-q", "stream.json"], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "samples/stream.json"], cwd=ROOT).returncode == 1
