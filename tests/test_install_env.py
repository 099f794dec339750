"""The environment installer picks the Python a sourced ROS 2's rclpy is built for, and says so; a mismatch is
one clear error before anything is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_ros(tmp_path: Path, version: str) -> dict:
    """A ROS 2 install as its setup.bash leaves it: ROS_DISTRO and an rclpy on PYTHONPATH."""
    site = tmp_path / "opt" / "ros" / "jazzy" / "lib" / f"python{version}" / "site-packages"
    (site / "rclpy").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    return env | {"ROS_DISTRO": "jazzy", "PYTHONPATH": str(site)}


def run(cmd: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_sourced_jazzy_selects_the_python_its_rclpy_is_built_for(tmp_path):
    proc = run("source scripts/python_for_env.sh && choose_python && echo PICKED=$PYTHON", fake_ros(tmp_path, "3.12"))
    assert proc.returncode == 0, proc.stderr
    assert "PICKED=python3.12" in proc.stdout and "its rclpy is built for python3.12" in proc.stdout
    plain = {k: v for k, v in os.environ.items() if k not in ("ROS_DISTRO", "PYTHON")}
    assert (
        "PICKED=python3.11"
        in run("source scripts/python_for_env.sh && choose_python && echo PICKED=$PYTHON", plain).stdout
    )


def test_a_python_that_cannot_import_the_sourced_rclpy_is_one_clear_error_before_any_install(tmp_path):
    env = fake_ros(tmp_path, "3.12") | {"PYTHON": "python3.11", "VENV": str(tmp_path / "venv")}
    proc = run("bash scripts/install_env.sh", env)
    assert proc.returncode == 1
    assert "PYTHON=python3.11, but the sourced ROS 2 jazzy's rclpy is built for python3.12" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_ros_distro_without_an_rclpy_says_to_source_the_setup_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "ROS_DISTRO": "nosuchdistro",
        "VENV": str(tmp_path / "venv"),
    }
    proc = run("bash scripts/install_env.sh", env)
    assert proc.returncode == 1 and "source /opt/ros/nosuchdistro/setup.bash" in proc.stderr
