#!/usr/bin/env bash
# System packages a fresh Debian 12 needs (README "Install"): the venv module for python3.11, Mesa EGL for
# the simulator's headless rendering (MUJOCO_GL=egl) and, with --tests, Chromium (screenshot test) and a C++
# toolchain (the safe-stop test builds controller_manager_msgs with colcon and the rosidl generators).
# Installs only what is missing (apt-get as root, or with sudo); elsewhere it names what to install.
set -euo pipefail
source "$(dirname "$0")/python_for_env.sh"
choose_python >/dev/null
pkgs=("$(basename "$PYTHON")-venv" libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1)
[[ "${1:-}" == "--tests" ]] && pkgs+=(chromium cmake g++ make)  # make: the rosidl build in the safe-stop test
command -v apt-get >/dev/null || { echo "[pai] not a Debian system: make sure these are installed: ${pkgs[*]}"; exit 0; }
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=""
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "[pai] missing system packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "[pai] installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
