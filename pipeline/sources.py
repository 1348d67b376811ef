"""Input sources: each yields RawMessage, so every input shares one pipeline."""
import itertools
import logging
import os
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UsageError, did_you_mean, first_line
from transforms import pubsub_names
from transforms.messages import RawMessage
from transforms.timeutil import format_time

_LOG = logging.getLogger(__name__)

def split_patterns(spec: str) -> list:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def check_input_files(spec: str, option: str = "input_files") -> list:
    """The patterns of --input_files (or of `option`, e.g. replay's dead_letter_files), each matching
    at least one file; else UsageError naming the option."""
    patterns = split_patterns(spec)
    if not patterns:
        raise UsageError(f"--{option}: give a path, a glob or a comma-separated list")
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            raise UsageError(f"--{option} {pattern}: is a directory; use a glob such as {pattern.rstrip('/')}/*.jsonl")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:  # noqa: BLE001 - any filesystem error is the user's to see, named here
            raise UsageError(f"--{option} {pattern}: cannot list it ({type(exc).__name__}: {exc})") from exc
        if not matched:
            raise UsageError(f"--{option}: no file matches {pattern}")
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


def check_exists(option: str, path: str) -> None:
    """At launch, before the graph is built: the subscription or topic an option names exists
    (Pub/Sub, or the emulator PUBSUB_EMULATOR_HOST names, answers a get). Beam's read of a missing
    one logs 404 tracebacks, gives up, and leaves a local run idle. Missing, unreachable, or no
    credentials: UsageError naming the option. Permission denied is not "missing": the least
    roles (pubsub.subscriber, pubsub.publisher) may pull or publish without the get permission,
    as the collector's Pub/Sub sink also assumes, so it is a warning and the run goes on."""
    from google.api_core import exceptions, retry
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import pubsub_v1
    kind = "subscription" if "/subscriptions/" in path else "topic"
    again = retry.Retry(predicate=retry.if_exception_type(exceptions.ServiceUnavailable, exceptions.DeadlineExceeded),
                        initial=0.2, maximum=1.0, timeout=10.0)
    try:
        with (pubsub_v1.SubscriberClient() if kind == "subscription" else pubsub_v1.PublisherClient()) as client:
            get = client.get_subscription if kind == "subscription" else client.get_topic
            try:
                get(request={kind: path}, retry=again, timeout=5.0)
            except exceptions.NotFound:
                raise UsageError(f"--{option} {path}: no such {kind}{_closest(client, kind, path)}") from None
    except exceptions.PermissionDenied as exc:
        _LOG.warning("--%s %s: cannot check that the %s exists (permission denied: %s); going on",
                     option, path, kind, exc.message)
    except DefaultCredentialsError:
        raise UsageError(f"--{option} {path}: no Google credentials to reach Pub/Sub (run `gcloud auth "
                         "application-default login`, or set PUBSUB_EMULATOR_HOST for the emulator)") from None
    except exceptions.GoogleAPIError as exc:
        where = os.environ.get("PUBSUB_EMULATOR_HOST") or "pubsub.googleapis.com"
        cause = exc.cause if isinstance(exc, exceptions.RetryError) and exc.cause else exc  # the last try's
        raise UsageError(f"--{option} {path}: cannot ask Pub/Sub ({where}) whether the {kind} exists: "
                         f"{first_line(cause)}") from None


def _closest(client, kind: str, path: str) -> str:
    """' (did you mean NAME?)' among the project's subscriptions or topics, by their short names
    (the shared projects/P/... prefix would make every name look close); '' when listing them is
    not allowed or none is close. The first 1,000 are enough for a typo."""
    from google.api_core import exceptions
    project, name = "/".join(path.split("/")[:2]), path.rsplit("/", 1)[1]
    request = {"project": project, "page_size": 1000}
    try:
        listing = client.list_subscriptions(request=request, timeout=5.0) if kind == "subscription" else \
            client.list_topics(request=request, timeout=5.0)
        names = {item.name.rsplit("/", 1)[1]: item.name for item in itertools.islice(listing, 1000)}
    except exceptions.GoogleAPIError:
        return ""
    return did_you_mean(name, names, shown=names)


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
