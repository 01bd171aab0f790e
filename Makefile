# esl-export: `make demo` and `make test` work from a fresh clone; both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DIST_STAMP := $(VENV)/.installed-distributed
DEMO_PORT ?= 18180

.PHONY: install test test-ui test-readme test-distributed lint demo clean

install: $(STAMP)

# Re-runs only when a dependency file changes; otherwise `make install` is instant.
$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update && apt-get install -y python3 python3-venv; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update && apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-test.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Fast and self-contained: no browser, no Airflow services, no PostgreSQL or Redis.
test: install lint
	$(BIN)/pytest -m "not ui and not services and not distributed and not readme"

# Browser tests: a real api-server driven by headless Debian Chromium through Playwright (never
# `playwright install`). If the Chromium package cannot be installed the tests skip, saying why.
# Plus the `services` tests: api-server, scheduler and dag-processor on SQLite running the trigger-form
# run, REST validation, a backfill and a run the scheduler schedules itself (they need no browser).
test-ui: install
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; } \
		|| echo "WARNING: could not install Debian chromium; browser tests will be skipped"
	$(BIN)/pytest -m "ui or services" tests/ui

# The README's "Pointing it at real servers" block, literally, in a fresh virtualenv and Airflow home
# (pip downloads the tested set from PyPI), then the view through a real api-server. Prints its time.
test-readme: install
	$(BIN)/pytest -m readme -rP tests/ui/test_readme_path.py

$(DIST_STAMP): $(STAMP) requirements-distributed.txt constraints.txt
	$(BIN)/python -m pip install --quiet -r requirements-distributed.txt -c constraints.txt
	touch $(DIST_STAMP)

# CeleryExecutor on PostgreSQL + Redis (Debian packages, installed if missing) with two workers.
test-distributed: install $(DIST_STAMP)
	bash scripts/install-services.sh
	ESL_REQUIRE_DISTRIBUTED=1 $(BIN)/pytest -m distributed tests/distributed

demo: install
	DEMO_PORT=$(DEMO_PORT) bash scripts/demo.sh

clean:
	rm -rf $(VENV) airflow_home data .pytest_cache .ruff_cache *.egg-info

.PHONY: bench
# The latency floor is measured with ApacheBench (Debian apache2-utils, installed if missing); without
# it that one row says "not measured" and the rest of the run goes on.
bench: install
	@command -v ab >/dev/null || { apt-get update -qq && apt-get install -y -qq apache2-utils >/dev/null; } \
		|| echo "WARNING: could not install Debian apache2-utils (ab); the ab floor will not be measured"
	$(BIN)/python benchmarks/run.py --out BENCHMARKS.md
