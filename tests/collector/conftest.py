"""The emulator fixtures of tests/integration, for the collector's tests (tests/conftest.py marks
every test using one `integration` and the emulator's marker)."""
from tests.integration.conftest import gcs_bucket, gcs_emulator, make_topic, pubsub_emulator  # noqa: F401
