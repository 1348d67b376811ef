"""Input sources: each yields RawMessage, so every input shares one pipeline."""
import os

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UsageError
from transforms.messages import RawMessage


def split_patterns(spec: str) -> list:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def check_input_files(spec: str) -> list:
    """The patterns of --input_files, each matching at least one file; else UsageError."""
    patterns = split_patterns(spec)
    if not patterns:
        raise UsageError("--input_files: give a path, a glob or a comma-separated list")
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            raise UsageError(f"--input_files {pattern}: is a directory; use a glob such as {pattern.rstrip('/')}/*.jsonl")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:  # noqa: BLE001 - any filesystem error is the user's to see, named here
            raise UsageError(f"--input_files {pattern}: cannot list it ({type(exc).__name__}: {exc})") from exc
        if not matched:
            raise UsageError(f"--input_files: no file matches {pattern}")
    return patterns


class ReadLinesFn(beam.DoFn):
    """Each line of a matched file as a RawMessage, numbered from 1.

    Lines are bytes, so a line that is not UTF-8 reaches Decode and becomes a dead letter
    instead of failing the read; the line number makes each message's dead letter its own.
    received_at stays unset: Decode stamps the read time.
    """

    def process(self, readable_file):
        source = "file:" + readable_file.metadata.path
        with readable_file.open() as handle:  # decompresses .gz by extension
            for number, line in enumerate(iter(handle.readline, b""), 1):
                yield RawMessage(line.rstrip(b"\r\n"), {}, source, None, str(number))


class ReadInputFiles(beam.PTransform):
    """Newline-delimited JSON files (globs, comma-separated lists, .gz) as RawMessages."""

    def __init__(self, patterns: list):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "Open" >> fileio.ReadMatches()
                | "ReadLines" >> beam.ParDo(ReadLinesFn()))
