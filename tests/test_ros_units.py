"""A bag recorded in radians (a ROS driver's JointState) replayed into the live node configured for a LeRobot
degrees policy: the policy sees what LeRobot itself reads from the same motor ticks, so the node's action chunks
equal the offline pipeline's; ~/joint_command carries the actions back in radians. The same bag into a node without
units, and ``pai check-inputs`` on it, name the joints that look like the wrong units."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_units import CALIBRATION, DEG_MEAN, DEG_STD, JOINTS, degrees_policy, lerobot_bus

rclpy = pytest.importorskip("rclpy")

IMAGE_TOPIC, JOINT_TOPIC = "/so101/front/image_raw", "/so101/joint_states"
FRAMES = 30
NS = "/pai_introspector"


def ticks_trajectory(n: int) -> np.ndarray:
    """(n, 6) whole motor ticks of an SO-101 moving about the policy's mean by about its spread."""
    t = np.arange(n)[:, None] / 10.0
    phase = np.arange(6) * 0.9
    cal = [CALIBRATION[j] for j in JOINTS]
    mid = np.array([(c["range_min"] + c["range_max"]) / 2 for c in cal])
    lo = np.array([c["range_min"] for c in cal])
    span = np.array([c["range_max"] - c["range_min"] for c in cal])
    deg_to_ticks = 4095 / 360
    centre = mid + DEG_MEAN * deg_to_ticks
    amplitude = DEG_STD * deg_to_ticks * 1.3
    centre[5], amplitude[5] = lo[5] + span[5] * DEG_MEAN[5] / 100, span[5] * DEG_STD[5] / 100 * 1.3  # 0..100
    return np.round(centre + amplitude * np.sin(2 * math.pi * t / 3.0 + phase)).astype(int)


class Listener:
    """Records the node's ~/action_chunk, ~/action, ~/joint_command and /diagnostics."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float32MultiArray

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("pai_units_listener", context=self.context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {"action_chunk": [], "action": [], "joint_command": [], "diagnostics": []}
        stream = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for name, cls in (
            ("action_chunk", Float32MultiArray),
            ("action", Float32MultiArray),
            ("joint_command", JointState),
        ):
            self.node.create_subscription(cls, f"{NS}/{name}", lambda m, n=name: self._add(n, m), stream)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._add("diagnostics", m), 20)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _add(self, name: str, msg) -> None:
        with self.lock:
            self.got[name].append(msg)

    def clear(self) -> None:
        with self.lock:
            for v in self.got.values():
                v.clear()

    def units_statuses(self) -> list:
        with self.lock:
            return [s for m in self.got["diagnostics"] for s in m.status if s.name == "pai_introspector: joint units"]

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pai_core.sim.bag import BagFrame, write_bag
    from pai_core.testing import synthetic_frame

    assert os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "run with scripts/run_tests.sh (loopback DDS)"
    root = tmp_path_factory.mktemp("ros_units")
    policy = degrees_policy(root / "policy")
    calibration = root / "so101_follower.json"
    calibration.write_text(json.dumps(CALIBRATION))
    ticks = ticks_trajectory(FRAMES)
    radians = (ticks - 2048) * 2 * math.pi / 4096  # what a ROS driver publishes for these ticks
    images = [synthetic_frame(48, 64, i / FRAMES, seed=i) for i in range(FRAMES)]
    write_bag(
        root / "bag",
        [BagFrame(i / 10.0, images[i], radians[i]) for i in range(FRAMES)],
        JOINTS,
        IMAGE_TOPIC,
        JOINT_TOPIC,
    )
    return {"root": root, "policy": policy, "calibration": calibration, "ticks": ticks, "images": images}


@pytest.fixture(scope="module")
def listener():
    lis = Listener()
    yield lis
    lis.close()


def replay(world: dict, name: str, units: dict | None) -> tuple[dict, Path]:
    from pai_core.sim.ros_replay import RosReplayConfig, replay_through_node, write_node_params

    params = write_node_params(
        world["root"] / f"{name}.yaml",
        world["policy"],
        "",
        cameras={IMAGE_TOPIC: "observation.images.front"},
        joint_names=JOINTS,
        joint_states_topic=JOINT_TOPIC,
        stale_timeout_s=60.0,
        rate_hz=20.0,
        safe_stop={"service": ""},
        **({"units": units} if units else {}),
    )
    summary = replay_through_node(
        RosReplayConfig(
            world["root"] / "bag",
            params,
            world["root"] / name,
            rate=1.0,
            domain_id=int(os.environ["ROS_DOMAIN_ID"]),
            progress=False,
        )
    )
    return summary, params


def lerobot_units(world: dict) -> dict:
    return {
        "conversions": ["lerobot_degrees"] * 5 + ["lerobot_range_0_100"],
        "calibration_path": str(world["calibration"]),
    }


def test_the_node_feeds_a_degrees_policy_what_lerobot_reads_and_sends_actions_back_in_radians(world, listener):
    from pai_core.observation import Observation
    from pai_core.pipeline import Pipeline
    from pai_core.settings import load_settings
    from pai_core.sim.bag import START_NS
    from pai_core.units import JointUnits

    listener.clear()
    summary, params = replay(world, "degrees", lerobot_units(world))
    assert summary["frames_answered"] == FRAMES, summary
    time.sleep(0.5)
    # offline: the same images, and the state LeRobot's own Feetech bus reads from the same ticks
    bus = lerobot_bus(use_degrees=True)
    states = [
        np.array(list(bus._normalize({i + 1: int(t) for i, t in enumerate(row)}).values()), np.float32)
        for row in world["ticks"]
    ]
    offline = Pipeline.load(str(world["policy"])).engine.step_batch(
        [Observation(images={"observation.images.front": img}, state=s) for img, s in zip(world["images"], states)]
    )
    # offline `pai replay --bag ... --config degrees.yaml` reads the same bag into the same states
    from pai_core.sources.bag import BagSource, BagTopics

    topics = BagTopics.from_settings(load_settings(params), ["observation.images.front"], needs_state=True)
    with BagSource(world["root"] / "bag", topics) as source:
        replayed = [obs.state for obs in source]
    assert len(replayed) == FRAMES
    np.testing.assert_allclose(np.stack(replayed), np.stack(states), rtol=1e-6, atol=1e-4)
    with listener.lock:
        chunks = [np.asarray(m.data).reshape(4, 6) for m in listener.got["action_chunk"]][-FRAMES:]
        actions = [np.asarray(m.data) for m in listener.got["action"]][-FRAMES:]
        commands = list(listener.got["joint_command"])[-FRAMES:]
    assert len(chunks) == FRAMES and len(commands) == FRAMES
    for i, (got, want) in enumerate(zip(chunks, offline)):
        np.testing.assert_allclose(got, want.action_chunk, rtol=1e-4, atol=1e-3, err_msg=f"frame {i}")
    units = JointUnits.from_settings(load_settings(params))
    stamps = [c.header.stamp.sec * 10**9 + c.header.stamp.nanosec for c in commands]
    assert stamps == [START_NS + i * 100_000_000 for i in range(FRAMES)]
    for command, action in zip(commands, actions):
        assert list(command.name) == JOINTS
        np.testing.assert_allclose(command.position, units.to_robot(action), rtol=1e-6, atol=1e-9)
    assert max(abs(c.position[1]) for c in commands) < math.pi, "commands are radians, not degrees"
    statuses = listener.units_statuses()
    assert statuses and statuses[-1].level == b"\x00", statuses[-1].message if statuses else "no diagnostics"
    assert statuses[-1].message.startswith("states fit the policy's statistics")


def test_without_units_the_node_and_check_inputs_name_the_joints_that_look_like_radians(world, listener, capsys):
    from pai_core.cli import main
    from pai_core.sim.ros_replay import write_node_params

    listener.clear()
    summary, params = replay(world, "plain", None)
    assert summary["frames_answered"] == FRAMES
    warned = [s for s in listener.units_statuses() if s.level == b"\x01"]
    assert warned, [s.message for s in listener.units_statuses()]
    assert warned[-1].message.startswith("joints that look like the wrong units: shoulder_pan")
    assert all(j in warned[-1].message for j in JOINTS)
    log = (world["root"] / "plain" / "node.log").read_text()
    assert "joint states look like the wrong units for" in log and "radians where the policy expects degrees" in log

    bag, policy = str(world["root"] / "bag"), str(world["policy"])
    assert main(["check-inputs", "--bag", bag, "--policy-path", policy, "--config", str(params)]) == 3
    assert "joints that look like the wrong units: " + ", ".join(JOINTS) in capsys.readouterr().out
    right = write_node_params(
        world["root"] / "right.yaml",
        world["policy"],
        "",
        joint_names=JOINTS,
        joint_states_topic=JOINT_TOPIC,
        units=lerobot_units(world),
    )
    assert main(["check-inputs", "--bag", bag, "--policy-path", policy, "--config", str(right)]) == 0
    assert "every joint fits the policy's statistics" in capsys.readouterr().out
