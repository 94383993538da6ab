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

.PHONY: setup lab check test test-browser test-tansu test-docker test-room test-all test-notebook notebooks up down status \
        doctor labs environment site site-preview test-site

# Re-runs are fast: pip runs again only when pyproject.toml changed. pip compiles every module at install
# (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile the SDK and the
# rest from source in every process it starts.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(BIN)/python -m effectively_once up --backend $(BACKEND)
	@# JupyterLab refuses to run as root unless told to (containers, CI machines).
	@dir="$$($(BIN)/python -m effectively_once workspace --print-dir)" && cd "$$dir" && \
	  exec "$(CURDIR)/$(BIN)/jupyter" lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) 00_start_here.ipynb

# The fast checks, no services needed (about a minute): lint, types, every notebook
# against its source, labs against solutions, and the unit lane (tests/unit).
# mypy runs beside the rest (on a fresh clone it has no cache yet, and takes about 20 s) and speaks at the end.
check: setup
	@set -e; start=$$(date +%s); mypy_out=$$(mktemp); \
	$(BIN)/mypy > "$$mypy_out" 2>&1 & mypy_pid=$$!; \
	trap '[ -z "$$mypy_pid" ] || kill $$mypy_pid 2>/dev/null; rm -f "$$mypy_out"' EXIT; \
	echo "== ruff"; $(BIN)/ruff check .; \
	echo "== notebooks against their sources"; $(BIN)/python tools/notebooks.py check; \
	echo "== labs against solutions"; $(BIN)/python tools/make_labs.py --check; \
	$(BIN)/python tools/lanes.py unit $(LANE_ARGS); \
	echo "== mypy"; mypy_rc=0; wait $$mypy_pid || mypy_rc=$$?; mypy_pid=; cat "$$mypy_out"; [ $$mypy_rc = 0 ]; \
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

# The room of thirty (tests/room): thirty learners run the demo at the same moment on one secured stack, each
# run charged exactly once; it prints the room's time against one learner alone. Heavy: make test leaves it out.
test-room: setup
	@$(BIN)/python tools/lanes.py room $(LANE_ARGS)

# The docker lane: the stack tests, the guarantee probe, the crash matrix, a killed broker
# container then `up`, and notebooks 00, 03, 04, all on EO_BACKEND=docker. It starts a private
# dockerd when no engine answers (and stops it), and builds local images when the official ones
# cannot be pulled (tools/docker_lane.py, which runs `tools/lanes.py docker`).
test-docker: setup
	@$(BIN)/python tools/docker_lane.py $(LANE_ARGS)

# CI: every lane once (the site's check is in the browser lane). DOCKER_LANE=0 leaves the docker lane out
# (the GitHub workflow runs it in a job of its own).
DOCKER_LANE ?= 1
# A failed lane does not stop the next: every lane reports, and the exit status is the last failure's.
test-all: check
	@rc=0; $(BIN)/python tools/lanes.py integration notebooks browser tansu room $(LANE_ARGS) || rc=$$?; \
	if [ "$(DOCKER_LANE)" = 1 ]; then $(BIN)/python tools/docker_lane.py $(LANE_ARGS) || rc=$$?; fi; \
	exit $$rc

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

# The course as a website, in _build/site: Jupyter Book (Sphinx) over the committed notebooks, which it never
# runs; everything it needs comes with `make setup` (no Node.js), and no page loads anything from another host.
site: setup
	$(BIN)/python tools/website.py build

# Serve _build/site on http://127.0.0.1:8000 (SITE_PORT=8001 for another port; Ctrl-C stops it).
SITE_PORT ?= 8000
site-preview:
	@test -f _build/site/index.html || { echo "no site yet: run make site first" >&2; exit 2; }
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory _build/site $(SITE_PORT)

# Build the site and read every page in headless Chromium (tests/browser/test_site.py); screenshots in artifacts/site/.
test-site: setup
	$(BIN)/python -m pytest tests/browser/test_site.py -p no:cacheprovider $(PYTEST_ARGS)
