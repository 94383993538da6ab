# Exactly-Once in Production: `make lab` opens the course, `make test` runs a contributor's checks,
# `make test-all` every lane (CI).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
BACKEND ?= auto
PYTEST_ARGS ?=
# Anything for pytest, through tools/lanes.py: make test PYTEST_ARGS="-x -k churn"
LANE_ARGS = $(if $(strip $(PYTEST_ARGS)),-- $(PYTEST_ARGS))

.PHONY: setup lab check test test-browser test-tansu test-all test-notebook notebooks up down status doctor labs \
        environment

# Re-runs are fast: pip runs again only when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(BIN)/python -m effectively_once up --backend $(BACKEND)
	@# JupyterLab refuses to run as root unless told to (containers, CI machines).
	$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/00_start_here.ipynb

# The fast checks, no services needed (about a minute): lint, types, every notebook
# against its source, labs against solutions, and the unit lane (tests/unit).
check: setup
	@set -e; start=$$(date +%s); \
	echo "== ruff"; $(BIN)/ruff check .; \
	echo "== mypy"; $(BIN)/mypy; \
	echo "== notebooks against their sources"; $(BIN)/python tools/notebooks.py check; \
	echo "== labs against solutions"; $(BIN)/python tools/make_labs.py --check; \
	$(BIN)/python tools/lanes.py unit $(LANE_ARGS); \
	echo "make check: passed in $$(( $$(date +%s) - start )) s"

# The lanes, each run once (tools/lanes.py: one stack for all of them, a JUnit XML each under
# test-results/, `python tools/slowest_tests.py` prints the slowest). CONTRIBUTING.md says which to run when.
# What a contributor runs: make check, then the integration and notebooks lanes on embedded Apache Kafka.
test: check
	@$(BIN)/python tools/lanes.py integration notebooks $(LANE_ARGS)

# JupyterLab in headless Chromium (Debian's `chromium`; skipped, saying why, where there is none).
test-browser: setup
	@$(BIN)/python tools/lanes.py browser $(LANE_ARGS)

# The checks that differ by broker, again on Tansu, the light fallback: stack, probe, churn, notebooks 03 and 04.
test-tansu: setup
	@$(BIN)/python tools/lanes.py tansu $(LANE_ARGS)

# CI: every lane once.
test-all: check
	@$(BIN)/python tools/lanes.py integration notebooks browser tansu $(LANE_ARGS)

# One notebook's nbval (its solution and lab too, when it has them): make test-notebook NB=04
test-notebook: setup
	@test -n "$(NB)" || { echo "usage: make test-notebook NB=04" >&2; exit 2; }
	@k="$(NB)"; case "$$k" in *[0-9]) k="$${k}_";; esac; \
	$(BIN)/python tools/lanes.py notebooks -- -k "$$k" $(PYTEST_ARGS)

# Rebuild notebooks from their sources against the stack, then labs/: make notebooks NB=04
notebooks: setup
	@test -n "$(NB)" || { echo "usage: make notebooks NB=04 (or NB=notebooks/04, NB=solutions/04)" >&2; exit 2; }
	$(BIN)/python -m effectively_once up --backend $(BACKEND)
	$(BIN)/python tools/notebooks.py execute $(NB)
	$(BIN)/python tools/make_labs.py

up: setup
	$(BIN)/python -m effectively_once up --backend $(BACKEND)

down: setup
	$(BIN)/python -m effectively_once down

status: setup
	$(BIN)/python -m effectively_once status

doctor: setup
	$(BIN)/python -m effectively_once doctor

labs: setup
	$(BIN)/python tools/make_labs.py

environment: setup
	$(BIN)/python tools/sync_environment.py
