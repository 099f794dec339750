#!/usr/bin/env bash
# Issue 14's GPU checks in one call, for a machine with a lent H100/H200 (docs/gpu.md). Installs nothing:
# it says what is missing and runs what it can. About 8 minutes: the CUDA-only tests (tests/gpu), then
# bench/gpu.py (latency eager vs CUDA graph, bf16 accuracy, batch throughput, SAE vs the seed's, patch_knn
# at dataset size, replay, and the node when rclpy imports). Results go to $OUT (default outputs/gpu).
#
#   bash bench/gpu_check.sh                       # PYTHON=python3 by default
#   OUT=/tmp/gpu PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$OUT/hf_datasets_cache}"
export FASTDDS_DEFAULT_PROFILES_FILE="$PWD/config/fastdds_loopback.xml" ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-73}"

"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/environment.txt"
import importlib.util, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}")
need = {"lerobot": "lerobot==0.4.4 (+ draccus 0.10.0, datasets 4.x, diffusers 0.35, einops, gymnasium, jsonlines, "
                   "deepdiff, termcolor, pyserial; docs/gpu.md)",
        "cv2": "opencv-python-headless", "safetensors": "safetensors", "pyarrow": "pyarrow", "yaml": "pyyaml",
        "tqdm": "tqdm", "pytest": "pytest (+ pluggy, iniconfig) for tests/gpu", "rclpy": "ROS 2 wheels (bench/node.py only)"}
missing = [f"  {mod}: bring {what}" for mod, what in need.items() if importlib.util.find_spec(mod) is None]
print("missing:\n" + "\n".join(missing) if missing else "every module found")
sys.exit(0 if torch.cuda.is_available() else 3)
PYEOF
[ "${PIPESTATUS[0]}" = 3 ] && { echo "no CUDA device: nothing to measure"; exit 3; }

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 180 "$PY" -m pytest tests/gpu -q -rA -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/gpu_tests.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
else
  echo "pytest does not import: tests/gpu skipped (bench/gpu.py still checks graph == eager)" | tee "$OUT/gpu_tests.txt"
fi
timeout 330 "$PY" bench/gpu.py --out "$OUT/gpu.json" 2> >(tee "$OUT/gpu_bench.log" >&2) > "$OUT/gpu_bench.json" \
  || status=1
tail -c 6000 "$OUT/gpu_bench.json"
exit $status
