# Quick start: `make demo`, `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
DEMO_DIR := demo-output
DEMO_WAREHOUSE := duckdb:///$(DEMO_DIR)/sluice.duckdb
N ?= 200000

.PHONY: demo test bench sample clean

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

# TypeScript's compiler, pinned in package-lock.json: the tests compile the generated tracking code.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/throughput.py --events $(N)

sample: $(STAMP)
	$(PY) samples/generate.py samples/events.jsonl

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .hypothesis
