"""The emulator fixtures: real emulators, started and stopped by the suite, on 127.0.0.1.

A plugin (tests/conftest.py's `pytest_plugins`), not a conftest: fixtures defined once and seen
by every directory, so tests/integration and tests/collector share one emulator of each kind per
session. A conftest importing them would define them a second time, and pytest would start a
second session emulator for that directory's tests."""
import uuid

import pytest

from tests.integration.emulators import BigQueryEmulator, GcsEmulator, PubSubEmulator


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory):
    with BigQueryEmulator(tmp_path_factory.mktemp("bigquery")) as emulator:
        yield emulator


@pytest.fixture
def bigquery_client(bigquery_emulator):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery
    return bigquery.Client(project=bigquery_emulator.project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=bigquery_emulator.endpoint))


@pytest.fixture
def dataset_name():
    """A dataset of the test's own, so tests sharing the emulator never see each other's tables."""
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    with PubSubEmulator(tmp_path_factory.mktemp("pubsub")) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    with GcsEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch):
    """(bucket name, client): a fresh bucket; STORAGE_EMULATOR_HOST set for this test and its children."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    client = gcs_emulator.client()
    name = "sluice-" + uuid.uuid4().hex[:12]
    client.create_bucket(name)
    return name, client


class Topic:
    """A topic with one subscription on the Pub/Sub emulator (PUBSUB_EMULATOR_HOST set)."""

    def __init__(self, project: str, prefix: str):
        from google.cloud import pubsub_v1
        self.publisher, self.subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.path = self.publisher.topic_path(project, name)
        self.subscription = self.subscriber.subscription_path(project, name)
        self.publisher.create_topic(name=self.path)
        self.subscriber.create_subscription(name=self.subscription, topic=self.path)

    def pull_all(self, wait: float = 10, then: float = 1) -> list:
        """Every message waiting on the subscription, acknowledged. For a publisher that is done
        (every caller's has returned, its publishes confirmed): all it published is there, and the
        emulator answers a pull with what is there at once. The last pull, empty, waits its whole
        timeout, so once messages came pulls wait `then` (the 10 s of `wait` was 10 s a call)."""
        messages = []
        while True:
            timeout = then if messages else wait
            response = self.subscriber.pull(subscription=self.subscription, max_messages=100, timeout=timeout)
            if not response.received_messages:
                return messages
            messages += [m.message for m in response.received_messages]
            self.subscriber.acknowledge(subscription=self.subscription,
                                        ack_ids=[m.ack_id for m in response.received_messages])

    def close(self) -> None:
        self.subscriber.close()


@pytest.fixture
def make_topic(pubsub_emulator, monkeypatch):
    """make_topic(prefix) -> Topic; each closed after the test."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    made = []

    def make(prefix: str) -> Topic:
        made.append(Topic(pubsub_emulator.project, prefix))
        return made[-1]
    yield make
    for topic in made:
        topic.close()
