# sysmon-nb: `make demo` runs JupyterLab with the extension; `make test` runs every check;
# `make bench` runs the benchmarks (`make bench PARTS=fanout` for one part).
# Each target creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8888
# jupyter refuses to run as root unless told; CI and containers run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: demo test lint clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e . "jupyterlab>=4"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[bench]"
	touch $@

# Parts: sampler fanout compression slow peers widget idle latency fleet prometheus
# (default: all). See benchmarks/README.md.
PARTS ?=
bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(PARTS)

demo: $(VENV)/.demo-installed
	@echo "sysmon-nb: the latest sample is at http://127.0.0.1:$(PORT)/sysmon/api/status"
	@echo "           and the live stream at ws://127.0.0.1:$(PORT)/sysmon/ws (see README)"
	cd notebooks && ../$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) $(ROOT_FLAG) \
		--LabApp.default_url=/lab/tree/demo.ipynb

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
