#!/usr/bin/env bash
# Start the Pub/Sub emulator that ships with the Google Cloud SDK, on 127.0.0.1 only.
#   scripts/pubsub-emulator.sh [PORT]        (default 8085; Ctrl-C stops it)
# Then, in other shells: export PUBSUB_EMULATOR_HOST=127.0.0.1:PORT
set -euo pipefail
port="${1:-8085}"
sdk="${CLOUDSDK_ROOT:-$(gcloud info --format='value(installation.sdk_root)')}"
exec "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator" --host=127.0.0.1 --port="$port"
