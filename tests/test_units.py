"""Robot units at the door (pai_core.units): conversions checked against LeRobot's own motor normalisation,
the units check against a degrees policy's statistics, and ``pai check-inputs`` on a bag recorded in radians."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pai_core.settings import PaiSettings, SettingsError, UnitsSettings, from_flat
from pai_core.units import JointUnits, MotorCalibration, check_states, load_calibration, suspects

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
# a calibration as `lerobot-calibrate` writes it for an SO-101 follower (ticks; drive_mode 1 on one joint)
CALIBRATION = {
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1470, "range_min": 758, "range_max": 3292},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 157, "range_min": 612, "range_max": 3339},
    "elbow_flex": {"id": 3, "drive_mode": 1, "homing_offset": 1105, "range_min": 857, "range_max": 3085},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": -2061, "range_min": 855, "range_max": 3256},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": 1640, "range_min": 157, "range_max": 3918},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1407, "range_min": 2031, "range_max": 3473},
}
# LeRobot SO-101 degrees policy statistics: body joints in degrees, gripper 0..100
DEG_MEAN = np.array([2.0, -35.0, 42.0, 65.0, -3.0, 22.0])
DEG_STD = np.array([22.0, 24.0, 21.0, 14.0, 28.0, 13.0])


def lerobot_bus(use_degrees: bool):
    """LeRobot's Feetech bus for an SO-101 follower, built without a serial port: ``SerialMotorsBus.__init__``
    is LeRobot's own; only the scservo_sdk import of ``FeetechMotorsBus.__init__`` is left out."""
    from lerobot.motors import Motor, MotorNormMode
    from lerobot.motors import MotorCalibration as LeCal
    from lerobot.motors.feetech import FeetechMotorsBus
    from lerobot.motors.motors_bus import SerialMotorsBus

    body = MotorNormMode.DEGREES if use_degrees else MotorNormMode.RANGE_M100_100
    motors = {
        name: Motor(i + 1, "sts3215", body if name != "gripper" else MotorNormMode.RANGE_0_100)
        for i, name in enumerate(JOINTS)
    }
    bus = FeetechMotorsBus.__new__(FeetechMotorsBus)
    SerialMotorsBus.__init__(bus, "/dev/null", motors, {k: LeCal(**v) for k, v in CALIBRATION.items()})
    return bus


@pytest.fixture
def calibration_file(tmp_path) -> Path:
    path = tmp_path / "so101_follower.json"
    path.write_text(json.dumps(CALIBRATION, indent=4))
    return path


def lerobot_units(path: Path, use_degrees: bool) -> JointUnits:
    body = "lerobot_degrees" if use_degrees else "lerobot_range_m100_100"
    settings = PaiSettings(
        units=UnitsSettings(conversions=[body] * 5 + ["lerobot_range_0_100"], calibration_path=str(path))
    )
    return JointUnits.from_settings(settings)


@pytest.mark.parametrize("use_degrees", [True, False])
def test_radians_become_exactly_what_lerobots_feetech_bus_reads_from_the_same_motor_ticks(
    calibration_file, use_degrees
):
    bus = lerobot_bus(use_degrees)
    units = lerobot_units(calibration_file, use_degrees)
    rng = np.random.default_rng(0)
    # whole ticks as a motor reports them, some outside the calibrated range (LeRobot bounds the ranges)
    ticks = rng.integers(0, 4096, size=(200, 6))
    radians = (ticks - 2048) * 2 * math.pi / 4096  # a driver whose 0 rad is the half-turn LeRobot homes to
    ours = units.to_policy(radians)
    for row, got in zip(ticks, ours):
        expected = bus._normalize({i + 1: int(t) for i, t in enumerate(row)})
        np.testing.assert_allclose(got, [expected[i + 1] for i in range(6)], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("use_degrees", [True, False])
def test_actions_go_back_to_the_ticks_lerobot_would_write_then_to_radians(calibration_file, use_degrees):
    bus = lerobot_bus(use_degrees)
    units = lerobot_units(calibration_file, use_degrees)
    rng = np.random.default_rng(1)
    body = rng.uniform(-80, 80, size=(50, 5)) if use_degrees else rng.uniform(-99, 99, size=(50, 5))
    actions = np.concatenate([body, rng.uniform(1, 99, size=(50, 1))], axis=1)
    radians = units.to_robot(actions)
    ticks = radians * 4096 / (2 * math.pi) + 2048
    for row, got in zip(actions, ticks):
        written = bus._unnormalize({i + 1: float(v) for i, v in enumerate(row)})  # LeRobot truncates to int
        np.testing.assert_array_equal(np.trunc(got + 1e-9).astype(int), [written[i + 1] for i in range(6)])
    # and back: the policy sees the action it sent
    np.testing.assert_allclose(units.to_policy(radians), actions, atol=1e-3)


def test_degrees_linear_and_same_conversions_and_their_inverses():
    units = JointUnits(
        ["a", "b", "c"], ["degrees", "linear", "same"], scale=[1.0, 100 / 1.75, 1.0], offset=[0.0, -5.0, 0.0]
    )
    robot = np.array([[math.pi / 2, 1.75, 0.3], [-math.pi, 0.0, -2.0]])
    policy = units.to_policy(robot)
    assert policy.dtype == np.float32
    np.testing.assert_allclose(policy, [[90.0, 95.0, 0.3], [-180.0, -5.0, -2.0]], rtol=1e-6)
    np.testing.assert_allclose(units.to_robot(policy), robot, rtol=1e-6, atol=1e-6)
    assert JointUnits(["a"]).identity and not units.identity
    assert units.describe() == {
        "a": "radians -> degrees",
        "b": "linear: policy = 57.1429 * robot + -5",
        "c": "same units",
    }
    with pytest.raises(SettingsError, match=r"robot state has shape \(2,\); expected 3 values"):
        units.to_policy(np.zeros(2))


def test_unit_settings_refuse_unknown_conversions_wrong_lengths_and_stray_scales(calibration_file):
    with pytest.raises(SettingsError, match=r"units.conversions\[1\]='radians' is not one of \['same', 'degrees'"):
        UnitsSettings(conversions=["degrees", "radians"])
    with pytest.raises(SettingsError, match=r"units.conversions has 2 entries but joint_names has 6"):
        PaiSettings(units=UnitsSettings(conversions=["degrees", "degrees"]))
    with pytest.raises(
        SettingsError,
        match=r"units.scale\[0\]=2.0 is set for shoulder_pan, whose conversion is "
        r"'degrees'; only linear joints use scale",
    ):
        PaiSettings(units=UnitsSettings(conversions=["degrees"] * 6, scale=[2.0] + [1.0] * 5))
    with pytest.raises(SettingsError, match="units.calibration_path is empty"):
        UnitsSettings(conversions=["lerobot_degrees"])
    with pytest.raises(SettingsError, match=r"units.zero_ticks\[1\]='x' must be a finite number"):
        UnitsSettings(zero_ticks=[2048, "x"])
    # through the flat (ROS parameter) names, an empty ROS list (None) is []
    settings = from_flat({"units.conversions": ["degrees"] * 6, "units.scale": None})
    assert settings.units.conversions == ["degrees"] * 6 and settings.units.scale == []


def test_a_calibration_file_that_is_missing_or_lacks_a_motor_is_named(calibration_file, tmp_path):
    assert load_calibration(calibration_file)["elbow_flex"] == MotorCalibration(3, 1, 1105, 857, 3085)
    with pytest.raises(SettingsError, match="nope.json: no such file"):
        load_calibration(tmp_path / "nope.json")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"shoulder_pan": {"id": 1, "drive_mode": 0}}))
    with pytest.raises(
        SettingsError,
        match=r"motor 'shoulder_pan' lacks \['homing_offset', 'range_min', "
        r"'range_max'\]",
    ):
        load_calibration(partial)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"m": {"id": 1, "drive_mode": 0, "homing_offset": 0, "range_min": 9, "range_max": 9}}))
    with pytest.raises(SettingsError, match="range_min=9 >= range_max=9"):
        load_calibration(flat)
    settings = PaiSettings(
        joint_names=["Rotation", "Pitch"],
        units=UnitsSettings(conversions=["lerobot_degrees"] * 2, calibration_path=str(calibration_file)),
    )
    with pytest.raises(
        SettingsError,
        match=r"joint Rotation \(lerobot_degrees\) needs motor 'Rotation' in the "
        r"LeRobot calibration, which has \['elbow_flex'",
    ):
        JointUnits.from_settings(settings)
    settings.units.calibration_names = ["shoulder_pan", "shoulder_lift"]
    assert JointUnits.from_settings(settings).to_policy(np.zeros(2)).shape == (2,)


def degrees_trajectory(n: int = 200, seed: int = 0) -> np.ndarray:
    """(n, 6) SO-101 states in the policy's units (degrees, gripper 0..100) moving like an episode."""
    t = np.linspace(0, 2 * math.pi, n)[:, None]
    phase = np.random.default_rng(seed).uniform(0, 2 * math.pi, 6)
    return DEG_MEAN + 1.2 * DEG_STD * np.sin(t + phase)


def test_the_check_names_joints_fed_in_radians_to_a_degrees_policy_and_passes_the_right_units():
    stats = {"mean": DEG_MEAN, "std": DEG_STD}
    degrees = degrees_trajectory()
    assert suspects(check_states(degrees, JOINTS, stats)) == []
    radians = np.radians(degrees)
    checks = check_states(radians, JOINTS, stats)
    assert suspects(checks) == JOINTS, [c.line() for c in checks]
    by_joint = {c.joint: c for c in checks}
    assert "x57.3 fits: radians where the policy expects degrees?" in by_joint["shoulder_pan"].reason
    assert "moves 0.0" in by_joint["wrist_roll"].reason
    # a robot holding still says nothing about scale: only a joint far from the policy's mean is named
    still = check_states(np.radians(np.tile(DEG_MEAN + [5, 5, -5, 3, 10, 2], (50, 1))), JOINTS, stats)
    assert suspects(still) == ["wrist_flex"]
    assert "median 1.187 is 4.6 std from the policy's mean 65" in still[3].reason
    # statistics with only min and max are enough
    lohi = {"min": DEG_MEAN - 2 * DEG_STD, "max": DEG_MEAN + 2 * DEG_STD}
    assert suspects(check_states(degrees, JOINTS, lohi)) == []
    with pytest.raises(SettingsError, match=r"statistics have \['q01'\]"):
        check_states(degrees, JOINTS, {"q01": DEG_MEAN})


# ---------------------------------------------------------------------------------------------- check-inputs
def write_joint_bag(path: Path, radians: np.ndarray, topic: str = "/joint_states") -> Path:
    """A rosbag2 (mcap) of sensor_msgs/JointState in radians, joints listed in another order than the policy's."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    order = [5, 3, 1, 0, 2, 4]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(topic, "sensor_msgs/msg/JointState", typestore=ts)
        for i, row in enumerate(radians):
            ns = 1_700_000_000_000_000_000 + i * 33_333_333
            stamp = T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
            header = T["std_msgs/msg/Header"](stamp=stamp, frame_id="")
            msg = T["sensor_msgs/msg/JointState"](
                header=header,
                name=[JOINTS[j] for j in order],
                position=np.asarray(row, np.float64)[order],
                velocity=np.zeros(6),
                effort=np.zeros(6),
            )
            writer.write(conn, ns, bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
    return path


def degrees_policy(out: Path) -> Path:
    """A small ACT whose normalisation statistics are an SO-101 degrees dataset's."""
    from pai_core.testing import make_act_policy

    stats = {
        "observation.images.front": {
            "mean": np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1),
            "std": np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1),
        },
        "observation.state": {"mean": DEG_MEAN, "std": DEG_STD},
        "action": {"mean": DEG_MEAN, "std": DEG_STD},
    }
    return make_act_policy(
        out, cameras={"observation.images.front": (48, 64)}, chunk_size=4, n_action_steps=2, stats=stats
    )


def write_config(path: Path, **units) -> Path:
    params = {"joint_names": JOINTS, "joint_states_topic": "/robot/joint_states"}
    if units:
        params["units"] = units
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


def test_check_inputs_names_the_joints_of_a_radians_bag_and_passes_it_with_the_right_conversions(tmp_path, capsys):
    from pai_core.cli import main

    policy = degrees_policy(tmp_path / "policy")
    degrees = degrees_trajectory(120)
    gripper_scale = 100 / 1.75  # the gripper's 0..1.75 rad is LeRobot's 0..100
    radians = np.radians(degrees)
    radians[:, 5] = degrees[:, 5] / gripper_scale
    bag = write_joint_bag(tmp_path / "bag", radians, "/robot/joint_states")

    plain = write_config(tmp_path / "plain.yaml")
    assert main(["check-inputs", "--bag", str(bag), "--policy-path", str(policy), "--config", str(plain)]) == 3
    out = capsys.readouterr().out
    assert "120 joint states from /robot/joint_states" in out
    assert "joints that look like the wrong units: " + ", ".join(JOINTS) in out
    assert "radians where the policy expects degrees" in out

    right = write_config(
        tmp_path / "right.yaml",
        conversions=["degrees"] * 5 + ["linear"],
        scale=[1.0] * 5 + [gripper_scale],
        offset=[0.0] * 6,
    )
    assert (
        main(["check-inputs", "--bag", str(bag), "--policy-path", str(policy), "--config", str(right), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["suspect_joints"] == [] and result["states"] == 120
    assert result["joints"]["elbow_flex"]["median"] == pytest.approx(np.median(degrees[:, 2]), rel=1e-4)

    assert (
        main(
            [
                "check-inputs",
                "--bag",
                str(bag),
                "--policy-path",
                str(policy),
                "--config",
                str(right),
                "--joint-states-topic",
                "/other",
            ]
        )
        == 1
    )
    assert (
        "has no topic '/other'; its topics are /robot/joint_states (sensor_msgs/msg/JointState)"
        in capsys.readouterr().err
    )
