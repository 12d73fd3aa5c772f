# Two commands for a newcomer: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON   ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
TF_EXTRA ?= cpu
STAMP    := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
CLI_HINT := triton-deploy is installed in $(VENV): run 'source $(BIN)/activate' (or call $(BIN)/triton-deploy)

.PHONY: setup demo test test-fast chart-lint lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## system packages + .venv with the project and its test tools
	@echo "$(CLI_HINT)"

$(STAMP): pyproject.toml constraints.txt scripts/setup-system.sh
	bash scripts/setup-system.sh
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11'" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(TF_EXTRA),test]"
	touch $@

demo: $(STAMP)  ## train + export the digits model, build the Triton repository, serve it and classify through it
	$(BIN)/python -m triton_deploy.demo
	@echo "$(CLI_HINT)"

test: lint  ## lint and type checks, then both tiers: tests/unit and tests/integration (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (rules in pyproject.toml) and mypy on the installed package shape
	$(BIN)/ruff check triton_deploy export optimize clients loadtests tests scripts
	$(BIN)/python scripts/typecheck.py

test-fast: $(STAMP)  ## the unit tier (tests/unit): neither training nor a server, under 2 minutes on 2 cores
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

chart-lint: $(STAMP)  ## render + lint the Helm chart with the tests' Helm engine (defaults, ci/*, VALUES="my.yaml")
	$(BIN)/python scripts/chart_lint.py $(VALUES)

clean:  ## remove build outputs (keeps .venv)
	rm -rf build results .pytest_cache model_repository/*/[0-9]*/model.onnx
