# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   create .venv, install, run the pipeline on the simulated demo dataset
#   make test   create .venv, install, run linters, type checks and the tests
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cryosnake-installed
PYTEST_ARGS ?=
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.cryosnake-bench-installed

.PHONY: help install demo dag test test-slow test-gpu lint format bench-env clean clean-all

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml envs/constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c envs/constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install cryosnake with its pinned dependencies

$(BENCH_VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(BENCH_VENV)

$(BENCH_STAMP): $(BENCH_VENV)/bin/python pyproject.toml envs/constraints.txt benchmarks/requirements-peers.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -c envs/constraints.txt -e '.[dev]'
	$(BENCH_VENV)/bin/python -m pip install --quiet -c envs/constraints.txt -r benchmarks/requirements-peers.txt
	touch $@

bench-env: $(BENCH_STAMP) ## create .venv-bench: cryosnake plus the benchmark peers (torch, ASPIRE)

demo: $(STAMP) ## run the workflow on the demo dataset (simulated first if absent)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all
	@echo "demo done: open results/report.html (every stage; the map is results/postprocess/postprocess.mrc)"

dag: $(STAMP) ## draw the rule and job graphs into results/dag (SVG needs graphviz: dot)
	@command -v dot >/dev/null || { echo "make: graphviz 'dot' not found (apt-get install graphviz)"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cryosnake dag $(DAG_ARGS)

lint: $(STAMP) ## ruff, ruff format, mypy, snakefmt and snakemake --lint
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile rules
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint --profile profiles/default
	$(BIN)/python scripts/check_pins.py

format: $(STAMP) ## reformat the code in place
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/snakefmt Snakefile rules

test: lint ## lint, then the test suite (without slow and gpu tests)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) ## the slow tests only
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-gpu: $(STAMP) ## the GPU tests only (needs CuPy and a CUDA device)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

clean: ## remove results, the demo data and caches (keeps .venv)
	rm -rf results data/demo .snakemake .pytest_cache .mypy_cache .ruff_cache rulegraph.svg dag.svg

clean-all: clean ## also remove .venv
	rm -rf $(VENV)
