#!/usr/bin/env bash
# Lint and types as `make test` (and so CI) runs them before the tests: formatting, ruff's rules and
# mypy on pai_core, all configured in pyproject.toml. Any finding fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
echo "[pai] lint: ruff format --check, ruff check, mypy (pyproject.toml)"
"$BIN/ruff" format --check .
"$BIN/ruff" check .
"$BIN/mypy"
