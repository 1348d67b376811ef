"""Input sources: each yields RawMessage, so every input shares one pipeline."""
import os

import apache_beam as beam
from apache_beam import coders
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


def line_to_message(filename_and_line) -> RawMessage:
    filename, line = filename_and_line
    return RawMessage(line, {}, "file:" + filename, None)  # received_at: the read time, set by Decode


class ReadInputFiles(beam.PTransform):
    """Lines of newline-delimited JSON files (gzip detected by extension) as RawMessages.

    Lines are read as bytes, so a line that is not UTF-8 reaches Decode and becomes a
    dead letter instead of failing the read.
    """

    def __init__(self, patterns: list):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "ReadLines" >> beam.io.ReadAllFromText(coder=coders.BytesCoder(), with_filename=True)
                | "ToMessages" >> beam.Map(line_to_message))
