#!/usr/bin/env bash
# The test suite as CI runs it: loopback-only DDS with its own domain id, offline hub, the repo venv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test_env.sh
echo "[pai] tests: ROS_DOMAIN_ID=$ROS_DOMAIN_ID, DDS profile $FASTDDS_DEFAULT_PROFILES_FILE"
exec .venv/bin/python -m pytest -q -ra "$@"
