"""Integration fixtures: real emulators, started and stopped by the suite, on 127.0.0.1."""
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
