"""Sluice pipeline: options, config, graph builder and entry point."""
import logging

from transforms import __version__  # noqa: F401 - the release, defined beside the stages that stamp it

# Importing apache_beam logs this on the root logger when apitools is not installed (Beam's
# apache_beam.io.gcp.internal.clients.bigquery). Sluice writes BigQuery with
# google-cloud-bigquery, never with Beam's apitools client, so every command would print a
# warning that is not true of it. This package is imported before apache_beam by every
# Sluice command (`python -m pipeline ...`, `sluice`, the flex template's main.py), so the
# filter is in place in time; it drops that one message and nothing else.
APITOOLS_NOTICE = "apitools not found, and bigquery client libraries are not available"


def _not_the_apitools_notice(record: logging.LogRecord) -> bool:
    return not (record.name == "root" and isinstance(record.msg, str) and record.msg.startswith(APITOOLS_NOTICE))


logging.getLogger().addFilter(_not_the_apitools_notice)
