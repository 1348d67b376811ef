"""Input sources: each yields RawMessage, so every input shares one pipeline."""
import os
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UsageError
from transforms import pubsub_names
from transforms.messages import RawMessage
from transforms.timeutil import format_time


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

    received_at is the file's last modification time (when its data arrived), so an event
    without times of its own gets the same receivedAt and timestamp on every re-run of a
    backfill, and the warehouse finds it again (BigQuery's re-run check is pruned by
    timestamp). Without a modification time Decode stamps the read time.
    """

    def process(self, readable_file):
        metadata = readable_file.metadata
        source = "file:" + metadata.path
        modified = getattr(metadata, "last_updated_in_seconds", None)
        received_at = format_time(datetime.fromtimestamp(modified, timezone.utc)) if modified else None
        with readable_file.open() as handle:  # decompresses .gz by extension
            for number, line in enumerate(iter(handle.readline, b""), 1):
                yield RawMessage(line.rstrip(b"\r\n"), {}, source, received_at, str(number))


class ReadInputFiles(beam.PTransform):
    """Newline-delimited JSON files (globs, comma-separated lists, .gz) as RawMessages.

    redistribute: spread the lines over the workers after reading (a Reshuffle). A file is
    read by one worker, line by line (its line numbers are the messages' positions, which
    derived message ids and dead-letter ids rest on); without the Reshuffle everything after
    the read would be fused to that worker too, and one large backfill file would use one
    machine. On Beam's local runner it would only hold every line in memory, so it is left out
    there (pipeline.runners says which runner distributes)."""

    def __init__(self, patterns: list, redistribute: bool = False):
        super().__init__()
        self._patterns, self._redistribute = list(patterns), redistribute

    def expand(self, pbegin):
        lines = (pbegin
                 | "Patterns" >> beam.Create(self._patterns)
                 | "Match" >> fileio.MatchAll()
                 | "Open" >> fileio.ReadMatches()
                 | "ReadLines" >> beam.ParDo(ReadLinesFn()).with_output_types(RawMessage))
        return lines | "Redistribute" >> beam.Reshuffle() if self._redistribute else lines


def check_pubsub(subscription, topic) -> tuple:
    """(subscription, topic), each checked for its full resource name; UsageError otherwise."""
    if subscription and not pubsub_names.SUBSCRIPTION.fullmatch(subscription):
        raise UsageError(f"--input_subscription {subscription!r}: expected projects/PROJECT/subscriptions/NAME "
                         "(a project id of 6-63 lower-case letters, digits and dashes)")
    return subscription, check_topic("input_topic", topic)


def check_topic(option: str, topic):
    """A topic option (--input_topic, --dead_letter_topic) checked for its full resource name;
    UsageError otherwise."""
    if topic and not pubsub_names.TOPIC.fullmatch(topic):
        raise UsageError(f"--{option} {topic!r}: expected projects/PROJECT/topics/NAME "
                         "(a project id of 6-63 lower-case letters, digits and dashes)")
    return topic


def to_raw_message(message, source: str) -> RawMessage:
    """A PubsubMessage as a RawMessage: its publish time is the receive time (receivedAt),
    its attributes are kept, its message id is its position (dead letters key on it)."""
    published = message.publish_time
    received_at = format_time(published) if published is not None else None
    return RawMessage(message.data or b"", dict(message.attributes or {}), source, received_at,
                      message.message_id)


class ReadPubSubMessages(beam.PTransform):
    """Messages of a subscription, or of a topic through a temporary subscription (as Beam's
    ReadFromPubSub makes one), as RawMessages."""

    def __init__(self, subscription=None, topic=None):
        super().__init__()
        self._subscription, self._topic = subscription, topic

    def expand(self, pbegin):
        source = "pubsub:" + (self._subscription or self._topic)
        return (pbegin
                | "Pull" >> beam.io.ReadFromPubSub(subscription=self._subscription, topic=self._topic,
                                                   with_attributes=True)
                | "AsRawMessages" >> beam.Map(to_raw_message, source))
