# Two entry points for a fresh machine: `make demo` and `make test`. Both create the virtual
# environment in .venv when it is missing (idempotent: a stamp file records the requirements it holds).
SHELL := /bin/bash
# PYTHON: empty = python3.11, or with a sourced ROS 2 the Python its rclpy is built for (scripts/python_for_env.sh)
PYTHON ?=
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
REQS := requirements/base.txt requirements/ros.txt requirements/constraints.txt pyproject.toml

.PHONY: demo demo-quick test lint env bench clean-env

env: $(STAMP)

$(STAMP): $(REQS) scripts/install_env.sh scripts/python_for_env.sh
	bash scripts/install_system.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install_env.sh
	touch $(STAMP)

# lint (ruff format, ruff check, mypy) first: a finding fails `make test` before the suite runs
test: $(STAMP)
	VENV=$(VENV) bash scripts/lint.sh
	bash scripts/install_system.sh --tests
	bash scripts/run_tests.sh

lint: $(STAMP)
	VENV=$(VENV) bash scripts/lint.sh

demo: $(STAMP)
	bash scripts/install_system.sh
	$(BIN)/pai demo

demo-quick: $(STAMP)
	$(BIN)/pai demo --quick

bench: $(STAMP)
	VENV=$(VENV) bash scripts/install_bench.sh
	$(BIN)/python bench/overhead.py

clean-env:
	rm -rf $(VENV)
