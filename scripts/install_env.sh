#!/usr/bin/env bash
# Creates the pai virtual environment. Everything pinned in requirements/constraints.txt.
# lerobot 0.4.4 pins torch<2.11 in its metadata, so it goes in with --no-deps and its runtime
# requirements come from requirements/base.txt (see ../shared/ENVIRONMENT.md and README "Install").
# On a machine with a sourced ROS 2 (ROS_DISTRO set) the venv sees the system rclpy and the
# PyPI ROS wheels are skipped.
set -euo pipefail
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
source scripts/python_for_env.sh
choose_python

if [[ -x "$VENV/bin/python" ]]; then
  have=$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
  if [[ "$have" != "$(basename "$PYTHON")" ]]; then
    echo "[pai] error: $VENV was made with $have but this environment needs $PYTHON; remove $VENV (make clean-env)" >&2
    exit 1
  fi
elif [[ -n "${ROS_DISTRO:-}" ]]; then
  echo "[pai] the venv sees the system rclpy (--system-site-packages); the PyPI ROS 2 wheels are skipped"
  "$PYTHON" -m venv --system-site-packages "$VENV"
else
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c requirements/constraints.txt)
# pip's noise about this machine's local index folders and LeRobot's (deliberately ignored) torch pins
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory\|lerobot 0.4.4 requires\|dependency resolver does not\|dependency conflicts" >&2); }
reqs=(-r requirements/base.txt)
if [[ -z "${ROS_DISTRO:-}" ]]; then
  reqs+=(-r requirements/ros.txt)
fi
echo "[pai] installing requirements into $VENV (torch, lerobot runtime, ROS 2 wheels) ..."
quiet "${PIP[@]}" "${reqs[@]}"
quiet "${PIP[@]}" --no-deps lerobot==0.4.4
quiet "${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, lerobot, pai_core; print('[pai] torch', torch.__version__, 'lerobot', lerobot.__version__)"
