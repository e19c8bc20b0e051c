# sysmon-nb: `make demo` runs JupyterLab with the extension; `make test` runs every check;
# `make bench` runs the benchmarks (`make bench PARTS=fanout` for one part);
# `make docs` builds the documentation (docs/, Sphinx + MyST) into build/docs;
# `make test-min` runs the tests with the lowest dependency versions pyproject.toml allows.
# Each target creates .venv (.venv-min) and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8888
# jupyter refuses to run as root unless told; CI and containers run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

# The floors' venv: every runtime dependency at its floor (constraints-min.txt), the test
# tools as new as those floors allow.
VENV_MIN := .venv-min
BIN_MIN  := $(VENV_MIN)/bin

.PHONY: demo test test-min lint clean bench docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e . "jupyterlab>=4"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

$(BIN_MIN)/python:
	$(PYTHON) -m venv $(VENV_MIN)
	$(BIN_MIN)/python -m pip install --quiet --upgrade pip

$(VENV_MIN)/.test-installed: pyproject.toml constraints-min.txt | $(BIN_MIN)/python
	$(BIN_MIN)/pip install --quiet -c constraints-min.txt -e ".[test]"
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[bench]"
	touch $@

$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

# Offline (no intersphinx), from scratch each time (-E: an incremental build would not
# repeat the warnings of pages it did not reread), every warning an error.
DOCS_OUT := build/docs
docs: $(VENV)/.docs-installed
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs $(DOCS_OUT)
	@echo "sysmon-nb: the documentation is at $(DOCS_OUT)/index.html"

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

# The whole suite at the floors (lint and mypy need no second run). pip check: the floors
# and the tools agree; the list shows what was installed.
test-min: $(VENV_MIN)/.test-installed
	$(BIN_MIN)/pip check
	$(BIN_MIN)/pip freeze --all | grep -iE "^($$(sed -n 's/==.*//p' constraints-min.txt | tr '_-' '..' | paste -sd'|' -))=="
	$(BIN_MIN)/pytest

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache .mypy_cache .ruff_cache build dist
