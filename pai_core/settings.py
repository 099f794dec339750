"""One configuration for the live node and for replay: ``config/introspect.yaml``.

The YAML is a ROS 2 parameters file (``/**: ros__parameters: ...``). The node declares exactly the
flattened fields of ``PaiSettings`` as parameters; replay reads the same file with ``load_settings``.
Both refuse a key they do not know, so a misspelt setting never falls back to its default silently.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .alarm import AlarmConfig
from .configs import OverlayConfig
from .errors import SettingsError
from .policy import MODEL_DTYPES, ModelDtype

#: parameters rclpy itself declares; a params file may set them beside pai's own settings.
ROS_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_PARAMETER_PREFIXES = ("qos_overrides.",)

Conversion = Literal["same", "degrees", "linear", "lerobot_degrees", "lerobot_range_m100_100", "lerobot_range_0_100"]
CONVERSIONS: tuple[str, ...] = get_args(Conversion)
StopBackendName = Literal["trigger", "ros2_control", "topic"]
STOP_BACKENDS: tuple[str, ...] = get_args(StopBackendName)
Strictness = Literal["strict", "best_effort"]
DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise SettingsError(f"{name}={value} must be positive")


def _floats(name: str, values: Iterable[Any]) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SettingsError(f"{name}[{i}]={v!r} must be a finite number")
        out.append(float(v))
    return out


@dataclass
class CameraSettings:
    """Camera topics and the policy image feature each one feeds (parallel lists, as ROS params allow)."""

    topics: list[str] = field(default_factory=lambda: ["/camera/front/image_raw"])
    features: list[str] = field(default_factory=lambda: ["observation.images.front"])


@dataclass
class UnitsSettings:
    """Args:
    conversions: per joint (joint_names order), how the robot's position becomes the policy's: same, degrees
        (radians -> degrees), linear (scale * robot + offset), lerobot_degrees, lerobot_range_m100_100,
        lerobot_range_0_100 (radians -> motor ticks -> LeRobot's normalisation with calibration_path). Empty:
        every joint same. Actions go back through the inverse.
    scale: per joint, the factor of linear joints (empty: 1.0; other joints must keep 1.0).
    offset: per joint, the offset of linear joints in policy units (empty: 0.0; other joints must keep 0.0).
    calibration_path: LeRobot calibration JSON of the robot (lerobot_* conversions), e.g.
        ~/.cache/huggingface/lerobot/calibration/robots/so101_follower/<id>.json.
    calibration_names: per joint, its motor's name in the calibration file (empty: the joint names).
    zero_ticks: per joint, the motor position in ticks at which the robot's driver reports 0 rad (empty:
        ticks_per_turn / 2, where LeRobot's half-turn homing puts the middle of the range).
    ticks_per_turn: motor ticks per revolution (Feetech STS3215: 4096).
    check: compare incoming states with the policy's normalisation statistics and report joints that look like
        the wrong units (log and diagnostics).
    """

    conversions: list[str] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    offset: list[float] = field(default_factory=list)
    calibration_path: str = ""
    calibration_names: list[str] = field(default_factory=list)
    zero_ticks: list[float] = field(default_factory=list)
    ticks_per_turn: int = 4096
    check: bool = True

    def __post_init__(self) -> None:
        for i, conv in enumerate(self.conversions):
            if conv not in CONVERSIONS:
                raise SettingsError(f"units.conversions[{i}]={conv!r} is not one of {list(CONVERSIONS)}")
        self.scale = _floats("units.scale", self.scale)
        self.offset = _floats("units.offset", self.offset)
        self.zero_ticks = _floats("units.zero_ticks", self.zero_ticks)
        if self.ticks_per_turn < 2:
            raise SettingsError(f"units.ticks_per_turn={self.ticks_per_turn} must be at least 2")
        if any(c.startswith("lerobot_") for c in self.conversions) and not self.calibration_path:
            raise SettingsError(
                "units.conversions use LeRobot's calibrated ranges (lerobot_*) but "
                "units.calibration_path is empty; give the robot's LeRobot calibration JSON"
            )

    def check_joints(self, joint_names: list[str]) -> None:
        """Every per-joint list is empty or has one entry per joint; scale/offset only on linear joints."""
        n = len(joint_names)
        for name in ("conversions", "scale", "offset", "calibration_names", "zero_ticks"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise SettingsError(
                    f"units.{name} has {len(values)} entries but joint_names has {n} {joint_names}; "
                    "give one per joint or none"
                )
        conversions = self.conversions or ["same"] * n
        for i, (joint, conv) in enumerate(zip(joint_names, conversions)):
            if conv == "linear":
                if self.scale and self.scale[i] == 0.0:
                    raise SettingsError(f"units.scale[{i}]=0.0 for {joint}: a linear joint needs a non-zero scale")
                continue
            for name, neutral in (("scale", 1.0), ("offset", 0.0)):
                values = getattr(self, name)
                if values and values[i] != neutral:
                    raise SettingsError(
                        f"units.{name}[{i}]={values[i]} is set for {joint}, whose conversion is "
                        f"{conv!r}; only linear joints use {name} (keep {neutral})"
                    )


@dataclass
class SafeStopSettings:
    """Args:
    backend: how the robot is asked to stop when the alarm rises: trigger (std_srvs/Trigger service), ros2_control
        (controller_manager switch_controller deactivating controllers) or topic (only the latched ~/safe_stop).
    service: trigger: the std_srvs/Trigger service ("" = topic only).
    controller_manager: ros2_control: the controller manager's node name.
    controllers: ros2_control: the controllers to deactivate.
    strictness: ros2_control: strict (fail when any controller cannot be deactivated) or best_effort.
    timeout_s: an attempt without an answer after this long counts as failed.
    retry_s: wait after a failed attempt (refused, timed out, service missing); doubles up to retry_max_s while the
        alarm holds.
    retry_max_s: longest wait between attempts.
    """

    backend: StopBackendName = "trigger"
    service: str = "/safe_stop"
    controller_manager: str = "/controller_manager"
    controllers: list[str] = field(default_factory=list)
    strictness: Strictness = "strict"
    timeout_s: float = 2.0
    retry_s: float = 0.5
    retry_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.backend not in STOP_BACKENDS:
            raise SettingsError(f"safe_stop.backend={self.backend!r} is not one of {list(STOP_BACKENDS)}")
        if self.strictness not in get_args(Strictness):
            raise SettingsError(f"safe_stop.strictness={self.strictness!r} is not one of {list(get_args(Strictness))}")
        if self.backend == "ros2_control":
            if not self.controllers:
                raise SettingsError(
                    "safe_stop.backend=ros2_control needs safe_stop.controllers (the controllers to "
                    "deactivate, e.g. ['arm_controller'])"
                )
            if not self.controller_manager:
                raise SettingsError("safe_stop.backend=ros2_control needs safe_stop.controller_manager")
        for name in ("timeout_s", "retry_s", "retry_max_s"):
            _positive(f"safe_stop.{name}", getattr(self, name))
        if self.retry_max_s < self.retry_s:
            raise SettingsError(f"safe_stop.retry_max_s={self.retry_max_s} must be at least retry_s={self.retry_s}")

    @property
    def topic_only(self) -> bool:
        return self.backend == "topic" or (self.backend == "trigger" and not self.service)


@dataclass
class PaiSettings:
    """Args:
    policy_path: LeRobot pretrained_model directory or hub id.
    sae_path: SAE directory or hub id ("" runs without features and OOD).
    ood_params_path: ood_params.json ("" looks beside the SAE).
    device: torch device (cpu, cuda, cuda:N, mps).
    model_dtype: dtype the policy runs in: float32 (as saved), bfloat16 or float16; actions stay float32.
    policy_overrides: policy config fields set before the policy is built, as KEY=VALUE with JSON values (the
        CLI's --policy-overrides), e.g. ["temporal_ensemble_coeff=0.01", "n_action_steps=1"].
    joint_states_topic: sensor_msgs/JointState topic.
    joint_names: joint names in the policy's state order (JointState messages may use any order).
    rate_hz: introspection rate; the engine always takes the newest complete observation.
    max_input_age_s: inputs older than this (relative to the newest) are never combined.
    stale_timeout_s: no complete observation for this long raises the alarm when fail_safe is set.
    startup_grace_s: before the first complete observation, the watchdog waits this long (cameras and drivers
        starting) instead of stale_timeout_s.
    fail_safe: raise the alarm when monitoring is impossible (stale inputs, engine failure).
    publish_actions: publish the action chunk and next action (stopped while the alarm holds).
    threshold: OOD threshold override (0 uses the calibrated one from ood_params.json).
    feature_labels_path: labels.json from ``pai label-features`` ("" looks beside the SAE).
    """

    policy_path: str = ""
    sae_path: str = ""
    ood_params_path: str = ""
    device: str = "cpu"
    model_dtype: ModelDtype = "float32"
    policy_overrides: list[str] = field(default_factory=list)
    joint_states_topic: str = "/joint_states"
    joint_names: list[str] = field(
        default_factory=lambda: ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    )
    rate_hz: float = 10.0
    max_input_age_s: float = 0.5
    stale_timeout_s: float = 2.0
    startup_grace_s: float = 60.0
    fail_safe: bool = True
    publish_actions: bool = True
    threshold: float = 0.0
    feature_labels_path: str = ""
    cameras: CameraSettings = field(default_factory=CameraSettings)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
    safe_stop: SafeStopSettings = field(default_factory=SafeStopSettings)
    units: UnitsSettings = field(default_factory=UnitsSettings)

    def __post_init__(self) -> None:
        if len(self.cameras.topics) != len(self.cameras.features):
            raise SettingsError(
                f"cameras.topics ({len(self.cameras.topics)}) and cameras.features ({len(self.cameras.features)}) "
                "must have the same length"
            )
        for name in ("rate_hz", "max_input_age_s", "stale_timeout_s", "startup_grace_s"):
            _positive(name, getattr(self, name))
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise SettingsError(f"threshold={self.threshold} must be 0 (calibrated) or a positive OOD threshold")
        if not DEVICE.match(self.device):
            raise SettingsError(f"device={self.device!r} is not a torch device; expected cpu, cuda, cuda:N or mps")
        if self.model_dtype not in MODEL_DTYPES:
            raise SettingsError(f"model_dtype={self.model_dtype!r} is not one of {list(MODEL_DTYPES)}")
        for i, item in enumerate(self.policy_overrides):
            key, sep, _ = str(item).partition("=")
            if not sep or not key.strip():
                raise SettingsError(
                    f"policy_overrides[{i}]={item!r}: expected KEY=VALUE, e.g. temporal_ensemble_coeff=0.01"
                )
        duplicates = sorted({n for n in self.joint_names if self.joint_names.count(n) > 1})
        if duplicates:
            raise SettingsError(f"joint_names {self.joint_names} name {duplicates} more than once")
        self.units.check_joints(self.joint_names)

    @property
    def camera_map(self) -> dict[str, str]:
        """topic -> policy image feature."""
        return dict(zip(self.cameras.topics, self.cameras.features))


SECTIONS: dict[str, type] = {
    "cameras": CameraSettings,
    "overlay": OverlayConfig,
    "alarm": AlarmConfig,
    "safe_stop": SafeStopSettings,
    "units": UnitsSettings,
}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass -> {"alarm.n": 3, ...} (ROS parameter names and defaults)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, name + "."))
        elif f.name != "extra":
            out[name] = value
    return out


def is_ros_parameter(name: str) -> bool:
    """rclpy's own parameters (``use_sim_time`` ...), allowed in a params file beside pai's settings."""
    return name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES)


def check_known(names: Iterable[str], where: str = "") -> None:
    """Refuse names that are no setting: a misspelt key must never leave the default in force silently."""
    known = flatten(PaiSettings())
    unknown = sorted(n for n in set(names) - set(known) if not is_ros_parameter(n))
    if unknown:
        raise SettingsError(f"{where}Unknown settings {unknown}; known settings are {sorted(known)}")


def from_flat(values: dict[str, Any]) -> PaiSettings:
    """Inverse of ``flatten``; unknown names are an error that lists the known ones. ROS parameters of rclpy
    itself (``use_sim_time``) are ignored here, and an empty list from a ROS params file (None) is []."""
    check_known(values)
    known = flatten(PaiSettings())
    nested: dict[str, Any] = {}
    for name, value in values.items():
        if is_ros_parameter(name) and name not in known:
            continue
        default = known[name]
        if isinstance(default, list) and value is None:
            value = []
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(default) is not type(value) and not (isinstance(default, list) and isinstance(value, (list, tuple))):
            raise SettingsError(f"Setting {name}={value!r} should be a {type(default).__name__}")
        value = list(value) if isinstance(value, tuple) else value
        head, _, tail = name.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[head] = value
    try:
        for key, cls in SECTIONS.items():
            if key in nested:
                nested[key] = cls(**nested[key])
        return PaiSettings(**nested)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from exc


def _flatten_yaml(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten_yaml(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_settings(path: str | Path, node_name: str = "pai_introspector") -> PaiSettings:
    """Read a ROS 2 parameters file: the ``/**`` block, then the node's own block on top."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"Settings file {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"Could not load YAML from {path}: {exc}") from exc
    values: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        block = doc.get(key, {})
        if block:
            values.update(_flatten_yaml(block.get("ros__parameters", {})))
    if not values:
        raise SettingsError(f"{path} has no '/**: ros__parameters:' (or '{node_name}:') block")
    try:
        return from_flat(values)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
