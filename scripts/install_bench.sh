#!/usr/bin/env bash
# Adds the benchmark-only packages (requirements/bench.txt) to the pai virtual environment, with --no-deps so
# that nothing already installed (torch, LeRobot 0.4.4) is replaced; then checks the seed's mapper loads.
set -euo pipefail
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[pai] error: $VENV does not exist; create it first (make env)" >&2
  exit 1
fi
echo "[pai] installing the benchmark packages (requirements/bench.txt, --no-deps) into $VENV ..."
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r requirements/bench.txt \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$VENV/bin/python" -c "import bench.seed as s; print('[pai] seed', s.VERSION, 'at', s.package_dir())"
