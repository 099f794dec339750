"""Replay a bag through the real ROS node: start ``pai_introspector`` as a process, play the bag into it
with ``bag_replay`` (``ros2_ws/src/pai/pai/bag_replay.py``), stop the node cleanly.

Subprocesses only: pai_core never imports rclpy. DDS stays on loopback (the repository's Fast DDS
profile, as ``scripts/test_env.sh`` sets it, or localhost-only discovery without it) on a private ROS
domain, so a replay never talks to, or is disturbed by, a robot on the network.

The ROS package (``ros2_ws/src/pai``) is not part of the Python package: ``find_ros_package`` takes it from
an argument, else ``$PAI_ROS_PACKAGE``, else the source checkout this module sits in, and names what it
searched when none holds it (an installed pai_core has no checkout around it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PaiError, RosUnavailable, UsageError

#: the folder pai_core is imported from: the source checkout (with ros2_ws/ and config/), or site-packages
ROOT = Path(__file__).resolve().parents[2]
#: environment variable naming the ``pai`` ROS package folder (``.../ros2_ws/src/pai``)
ROS_PACKAGE_ENV = "PAI_ROS_PACKAGE"


def find_ros_package(explicit: str | Path | None = None) -> Path:
    """The ``pai`` ROS package sources (the folder holding ``pai/introspect_node.py``): ``explicit``, else
    ``$PAI_ROS_PACKAGE``, else ``ros2_ws/src/pai`` of the source checkout. The first one given is the only
    one tried (a wrong explicit path is an error, not a silent fallback); ``RosUnavailable`` names it."""
    if explicit:
        where, package = "the argument", Path(explicit)
    elif os.environ.get(ROS_PACKAGE_ENV):
        where, package = f"${ROS_PACKAGE_ENV}", Path(os.environ[ROS_PACKAGE_ENV])
    else:
        where, package = "the source checkout", ROOT / "ros2_ws" / "src" / "pai"
    if not (package / "pai" / "introspect_node.py").is_file():
        raise RosUnavailable(
            f"the ROS package sources are missing: {where} gives {package}, which has no pai/introspect_node.py; "
            f"set {ROS_PACKAGE_ENV} to ros2_ws/src/pai of a pai checkout"
        )
    return package


def dds_profile(package: Path) -> Path | None:
    """The checkout's loopback Fast DDS profile (``config/fastdds_loopback.xml`` beside ``ros2_ws/``), if any."""
    profile = package.resolve().parents[2] / "config" / "fastdds_loopback.xml"
    return profile if profile.is_file() else None


def rclpy_available(ros_package: str | Path | None = None) -> str | None:
    """None when a live replay can run, else why not (without importing rclpy)."""
    try:
        spec = importlib.util.find_spec("rclpy")
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules["rclpy"] = None blocks it
        spec = None
    if spec is None:
        return (
            "rclpy is not installed (pip install ros-rclpy ros-sensor-msgs ros-std-msgs ros-std-srvs "
            "ros-diagnostic-msgs ros-rmw-fastrtps-cpp ros-fastdds, see requirements/)"
        )
    try:
        find_ros_package(ros_package)
    except RosUnavailable as exc:
        return str(exc)
    return None


def write_node_params(
    path: str | Path,
    policy_path: str | Path,
    sae_path: str | Path = "",
    cameras: dict[str, str] | None = None,
    joint_names: list[str] | None = None,
    joint_states_topic: str | None = None,
    base: str | Path | None = None,
    **overrides: Any,
) -> Path:
    """The node's params YAML: ``base`` with these models, topics and overrides.

    Args:
        cameras: camera topic -> policy image feature (default: the base's).
        base: a params file to start from; None: pai's defaults (the values config/introspect.yaml holds).
        overrides: other top-level parameters, e.g. ``stale_timeout_s=30.0``.
    """
    if base is None:
        doc = {"/**": {"ros__parameters": _default_params()}}
    elif Path(base).is_file():
        doc = yaml.safe_load(Path(base).read_text())
    else:
        raise UsageError(f"ROS replay: the base params file {base} does not exist")
    params = doc.setdefault("/**", {}).setdefault("ros__parameters", {})
    params.update(policy_path=str(policy_path), sae_path=str(sae_path), **overrides)
    if cameras is not None:
        params["cameras"] = {"topics": list(cameras), "features": list(cameras.values())}
    if joint_names is not None:
        params["joint_names"] = list(joint_names)
    if joint_states_topic is not None:
        params["joint_states_topic"] = joint_states_topic
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _default_params() -> dict[str, Any]:
    """``PaiSettings()`` as the nested ``ros__parameters`` block of a params file."""
    from ..settings import PaiSettings, flatten

    params: dict[str, Any] = {}
    for name, value in flatten(PaiSettings()).items():
        head, _, tail = name.partition(".")
        if tail:
            params.setdefault(head, {})[tail] = value
        else:
            params[head] = value
    return params


def ros_env(domain_id: int | None = None, ros_package: str | Path | None = None) -> dict[str, str]:
    """Environment for the node and bag_replay: loopback-only DDS, a private domain, the package."""
    package = find_ros_package(ros_package)
    env = dict(os.environ)
    profile = dds_profile(package)
    if not env.get("FASTDDS_DEFAULT_PROFILES_FILE") and profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    # a profile keeps Fast DDS on loopback; without one, ROS 2's own localhost-only discovery does
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT" if env.get("FASTDDS_DEFAULT_PROFILES_FILE") else "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    # never the shell's domain (a robot may live there): a private one per process, as scripts/test_env.sh
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else 1 + os.getpid() % 101)  # 0-101 only
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class RosReplayConfig:
    """Args:
    bag: rosbag2 folder or .mcap/.db3 file.
    params_file: the node's params YAML (``write_node_params``).
    output_dir: bag_replay's outputs and the node's log (node.log).
    offline_dir: an offline ``pai replay`` folder (ood.parquet) to compare the node with.
    rate: playback speed of the recorded timing (0 = as fast as the node answers).
    domain_id: ROS_DOMAIN_ID (default: a private one derived from the process id).
    start_timeout_s, frame_timeout_s: waits for the node to come up and for one frame's answer.
    extra_args: more bag_replay arguments.
    ros_package: the ``pai`` ROS package folder (``find_ros_package``; None: $PAI_ROS_PACKAGE or the checkout).
    """

    bag: Path
    params_file: Path
    output_dir: Path
    offline_dir: Path | None = None
    rate: float = 1.0
    domain_id: int | None = None
    start_timeout_s: float = 180.0
    frame_timeout_s: float = 60.0
    progress: bool = True
    extra_args: list[str] = field(default_factory=list)
    ros_package: Path | None = None


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGINT (the node shuts its executor and worker down), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def replay_through_node(cfg: RosReplayConfig) -> dict:
    """Start the node, play ``cfg.bag`` into it with bag_replay, stop the node; returns bag_replay's
    summary (plus the node's exit code). Raises ``RosUnavailable`` without rclpy, ``PaiError`` when the
    node fails or frames go unanswered."""
    why = rclpy_available(cfg.ros_package)
    if why:
        raise RosUnavailable(why)
    for what, p in (("bag", cfg.bag), ("params file", cfg.params_file)):
        if not Path(p).exists():
            raise UsageError(f"ROS replay: the {what} {p} does not exist")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = ros_env(cfg.domain_id, cfg.ros_package)
    node_log = out / "node.log"
    with open(node_log, "w") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(cfg.params_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            argv = [
                sys.executable,
                "-m",
                "pai.bag_replay",
                "--bag",
                str(cfg.bag),
                "--params-file",
                str(cfg.params_file),
                "--output-dir",
                str(out),
                "--rate",
                str(cfg.rate),
                "--start-timeout",
                str(cfg.start_timeout_s),
                "--frame-timeout",
                str(cfg.frame_timeout_s),
                *cfg.extra_args,
            ]
            if cfg.offline_dir is not None:
                argv += ["--offline-dir", str(cfg.offline_dir)]
            if not cfg.progress:
                argv.append("--no-progress")
            player = subprocess.Popen(argv, env=env)
            while player.poll() is None:
                if node.poll() is not None:  # the node died (bad model, params): stop waiting for it
                    _stop(player, 5.0)
                    raise PaiError(
                        f"the node exited with {node.returncode} during the ROS replay; "
                        f"its log ({node_log}):\n{_tail(node_log)}"
                    )
                time.sleep(0.2)
        finally:
            node_code = _stop(node)
    summary_path = out / "summary.json"
    if player.returncode not in (0, 3) or not summary_path.is_file():
        raise PaiError(f"bag_replay exited with {player.returncode} (node log {node_log}):\n{_tail(node_log)}")
    summary = json.loads(summary_path.read_text())
    summary["node_exit_code"] = node_code
    summary["node_log"] = str(node_log)
    summary_path.write_text(json.dumps(summary, indent=2))
    if node_code != 0:
        raise PaiError(f"the node did not shut down cleanly (exit {node_code}); log {node_log}:\n{_tail(node_log)}")
    if summary["frames_unanswered"]:
        raise PaiError(
            f"the node left {summary['frames_unanswered']} of {summary['frames_published']} frames "
            f"unanswered; see {summary_path} and {node_log}"
        )
    return summary
