# Quick start: `make demo`, `make test`. Both create .venv when it is missing.
# `make test-fast`: the suite without the emulators, Node or Python 3.13 (.venv only).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
DEMO_DIR := demo-output
DEMO_WAREHOUSE := duckdb:///$(DEMO_DIR)/sluice.duckdb
N ?= 200000
# The BigQuery emulator (local-bigquery) needs Python 3.13: pyenv's, else one on PATH.
PYTHON313 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13) \
                         $(shell command -v python3.13 2>/dev/null))
BQ_EMULATOR := .emulators/bigquery
BQ_STAMP := $(BQ_EMULATOR)/.installed
# gbstats, GrowthBook's stats engine, the reference of the experiment statistics' tests, needs Python 3.11:
# pyenv's, else one on PATH (its pandas 1.5.3 has no wheels for later ones).
PYTHON311 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.11*/bin/python3.11) \
                         $(shell command -v python3.11 2>/dev/null))
GBSTATS := .emulators/gbstats
GBSTATS_STAMP := $(GBSTATS)/.installed
DLT_ENV := .bench/dlt
DLT_STAMP := $(DLT_ENV)/.installed

.PHONY: demo serve test test-fast check-prereqs chromium bench bench-streaming bench-forwarding sample clean \
        emulators gbstats bigquery-emulator template

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# The demo config hashes emails with a salt from SLUICE_HASH_SALT; a real deployment sets its own.
demo: $(STAMP)
	SLUICE_HASH_SALT="$${SLUICE_HASH_SALT:-demo-only-salt}" $(PY) -m pipeline --input_files samples/events.jsonl --config samples/sluice.yaml \
		--warehouse $(DEMO_WAREHOUSE) --summary_path $(DEMO_DIR)/summary.json
	@echo
	@echo "Summary JSON: $(DEMO_DIR)/summary.json. Look at the tables:"
	@echo "  $(PY) -m pipeline.query $(DEMO_WAREHOUSE)"
	@echo "  $(PY) -m pipeline.query $(DEMO_WAREHOUSE) \"SELECT event_text, count(*) AS n FROM tracks GROUP BY 1 ORDER BY n DESC\""
	@echo "  $(PY) -m pipeline.query $(DEMO_WAREHOUSE) \"SELECT error_type, error_message, payload FROM _dead_letters LIMIT 10\""

# The collector in embedded mode on 127.0.0.1:8088: events sent to it are rows of the demo
# warehouse seconds later (docs/collector.md). samples/sluice.yaml lists no source, so the
# config served is that file with one source, web, whose write key is SLUICE_WEB_KEY
# (demo-write-key unless set), and its contracts directory made absolute.
SERVE_CONFIG := $(DEMO_DIR)/serve.yaml

$(SERVE_CONFIG): samples/sluice.yaml
	@mkdir -p $(DEMO_DIR)
	sed -e 's|^sources: \[\].*|sources: [{name: web, write_key: {env: SLUICE_WEB_KEY}}]   # added by make serve|' \
		-e 's|^  directory: contracts |  directory: $(CURDIR)/samples/contracts |' samples/sluice.yaml > $@

serve: $(STAMP) $(SERVE_CONFIG)
	@echo "Send events with the write key $${SLUICE_WEB_KEY:-demo-write-key}, e.g."
	@echo "  curl -u $${SLUICE_WEB_KEY:-demo-write-key}: -d '{\"event\": \"Signed Up\", \"userId\": \"u1\"}' http://127.0.0.1:8088/v1/track"
	@echo "and query meanwhile: $(PY) -m pipeline.query $(DEMO_WAREHOUSE) \"SELECT * FROM tracks\""
	SLUICE_HASH_SALT="$${SLUICE_HASH_SALT:-demo-only-salt}" SLUICE_WEB_KEY="$${SLUICE_WEB_KEY:-demo-write-key}" \
		$(PY) -m pipeline serve --config $(SERVE_CONFIG) --warehouse $(DEMO_WAREHOUSE) --host 127.0.0.1 --port 8088

# Pinned in package-lock.json: TypeScript's compiler (the tests compile the generated tracking
# code), @segment/analytics-node and @segment/analytics-next (the collector tests send with them;
# analytics.js is the latter's dist/umd/standalone.js, served to chromium by the tests).
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

# Debian's chromium: the browser the collector tests load analytics.js in (driven by playwright
# with executable_path=/usr/bin/chromium; playwright's own browser download is never used).
# Installed with apt when absent (CI runs as root); the stamp is the binary itself.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "make: $(CHROMIUM) missing and no apt-get: install Debian's chromium package" >&2; exit 1; }
	apt-get install -y --no-install-recommends chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }

chromium: $(CHROMIUM)

# A pinned environment of its own, made afresh when its list changes:
# $(call pinned_env,PYTHON,DIRECTORY,REQUIREMENTS); its stamp is DIRECTORY/.installed.
define pinned_env
	rm -rf $(2)
	$(1) -m venv $(2)
	$(2)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r $(3)
	@touch $(2)/.installed
endef

# The integration tests' emulators, installed from pinned lists into their own environments;
# the tests start and stop them on 127.0.0.1 (tests/integration/emulators.py).
$(BQ_STAMP): emulators/bigquery-requirements.txt
	@test -n "$(PYTHON313)" || { echo "make: the BigQuery emulator needs Python 3.13 (pyenv install 3.13)" >&2; exit 1; }
	$(call pinned_env,$(PYTHON313),$(BQ_EMULATOR),emulators/bigquery-requirements.txt)

# gbstats 0.8.0 needs numpy<2 and pandas<2, so it can't share .venv: tests/experiments/gbstats_reference.py
# runs it in this environment by subprocess (make test-fast skips those tests when it is missing).
$(GBSTATS_STAMP): emulators/gbstats-requirements.txt
	@test -n "$(PYTHON311)" || { echo "make: gbstats needs Python 3.11 (pyenv install 3.11)" >&2; exit 1; }
	$(call pinned_env,$(PYTHON311),$(GBSTATS),emulators/gbstats-requirements.txt)

gbstats: $(GBSTATS_STAMP)

emulators: $(BQ_STAMP) $(GBSTATS_STAMP)

# The BigQuery emulator for manual runs, on 127.0.0.1:9050 until Ctrl-C (docs/bigquery.md#a-local-emulator);
# BQ_PORT, BQ_PROJECT change its port and project. Its tables stay in demo-output/bigquery-emulator.
bigquery-emulator: $(STAMP) $(BQ_STAMP)
	$(PY) -m tests.integration.emulators --port $${BQ_PORT:-9050} --project $${BQ_PROJECT:-demo-project}

# make test needs Java, the Cloud SDK's Pub/Sub emulator, Node/npm and Python 3.13: checked first
# (make builds prerequisites in the order listed), one line per missing one (docs/testing.md).
check-prereqs:
	@PYTHON313="$(PYTHON313)" scripts/check-prereqs

# On both cores (pytest-xdist): most of the suite waits on emulators, subprocesses and servers, so two
# workers take 10 minutes where one took 15 (2026-12-03, 1,425 tests); each worker starts its own emulators.
test: check-prereqs $(STAMP) $(NODE_STAMP) $(BQ_STAMP) $(GBSTATS_STAMP) $(CHROMIUM)
	$(PY) -m pytest -n 2 --durations=25

# Everything but the tests that start emulators (marked integration by tests/conftest.py), those
# that run Node (marked node) and those that drive chromium (marked browser): needs only .venv.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not integration and not node and not browser"

# Dataflow flex template (templates/). Needs docker and gcloud (it cannot run in CI); e.g.
#   make template PROJECT=my-project TEMPLATE_BUCKET=my-bucket
# PROJECT: GCP project · REGION: Artifact Registry and Dataflow region · REPOSITORY: an Artifact
# Registry Docker repository · TAG: image tag (default: the commit) · TEMPLATE_BUCKET: gets sluice.json
PROJECT ?=
REGION ?= us-central1
REPOSITORY ?= sluice
TAG ?= $(shell git describe --always --dirty)
TEMPLATE_BUCKET ?=
IMAGE := $(REGION)-docker.pkg.dev/$(PROJECT)/$(REPOSITORY)/sluice:$(TAG)
TEMPLATE := gs://$(TEMPLATE_BUCKET)/sluice.json

template: $(STAMP)
	@test -n "$(PROJECT)" -a -n "$(TEMPLATE_BUCKET)" || { echo "make template: set PROJECT and TEMPLATE_BUCKET" >&2; exit 2; }
	$(PY) -m pytest -q tests/template
	DOCKER_BUILDKIT=1 docker build -f templates/Dockerfile -t $(IMAGE) .
	docker push $(IMAGE)
	gcloud dataflow flex-template build $(TEMPLATE) --project $(PROJECT) \
		--image $(IMAGE) --sdk-language PYTHON --metadata-file templates/metadata.json
	@echo "Template $(TEMPLATE); launch it with --parameters sdk_container_image=$(IMAGE)"

# dlt, the peer benchmarks/throughput.py runs beside Sluice, in an environment of its own from a pinned
# list (never a dependency of Sluice). When it cannot be installed, the benchmark says so and skips dlt.
$(DLT_STAMP): benchmarks/dlt-requirements.txt
	$(call pinned_env,$(PYTHON),$(DLT_ENV),benchmarks/dlt-requirements.txt)

bench: $(STAMP)
	@$(MAKE) --no-print-directory $(DLT_STAMP) || echo "make bench: dlt could not be installed in $(DLT_ENV)" >&2
	$(PY) benchmarks/throughput.py --events $(N)
	$(PY) benchmarks/collector.py
	$(PY) benchmarks/experiments.py

# Pub/Sub emulator -> local streaming runner -> DuckDB: messages/s and publish-to-row latency.
bench-streaming: $(STAMP)
	$(PY) benchmarks/streaming.py

# Forwarding to a local webhook with batching: events/s and the cost per event.
bench-forwarding: $(STAMP)
	$(PY) benchmarks/forwarding.py

sample: $(STAMP)
	$(PY) samples/generate.py samples/events.jsonl

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .hypothesis .emulators .bench
