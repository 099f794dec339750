"""One configuration for the live node and for replay: ``config/introspect.yaml``.

The YAML is a ROS 2 parameters file (``/**: ros__parameters: ...``). The node declares exactly the
flattened fields of ``PaiSettings`` as parameters; replay reads the same file with ``load_settings``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .alarm import AlarmConfig
from .errors import PaiError
from .overlay import OverlayConfig


class SettingsError(PaiError, ValueError):
    """The configuration file or a parameter value is invalid."""


@dataclass
class CameraSettings:
    """Camera topics and the policy image feature each one feeds (parallel lists, as ROS params allow)."""

    topics: list[str] = field(default_factory=lambda: ["/camera/front/image_raw"])
    features: list[str] = field(default_factory=lambda: ["observation.images.front"])


@dataclass
class SafeStopSettings:
    """Args:
    service: std_srvs/Trigger service called once when the alarm rises ("" for none).
    """

    service: str = "/safe_stop"


@dataclass
class PaiSettings:
    """Args:
    policy_path: LeRobot pretrained_model directory or hub id.
    sae_path: SAE directory or hub id ("" runs without features and OOD).
    ood_params_path: ood_params.json ("" looks beside the SAE).
    device: torch device.
    joint_states_topic: sensor_msgs/JointState topic.
    joint_names: joint names in the policy's state order (JointState messages may use any order).
    rate_hz: introspection rate; the engine always takes the newest complete observation.
    max_input_age_s: inputs older than this (relative to the newest) are never combined.
    stale_timeout_s: no complete observation for this long raises the alarm when fail_safe is set.
    fail_safe: raise the alarm when monitoring is impossible (stale inputs, engine failure).
    publish_actions: publish the action chunk and next action (stopped while the alarm holds).
    threshold: OOD threshold override (0 uses the calibrated one from ood_params.json).
    feature_labels_path: labels.json from ``pai label-features`` ("" looks beside the SAE).
    """

    policy_path: str = ""
    sae_path: str = ""
    ood_params_path: str = ""
    device: str = "cpu"
    joint_states_topic: str = "/joint_states"
    joint_names: list[str] = field(default_factory=lambda: ["shoulder_pan", "shoulder_lift", "elbow_flex",
                                                              "wrist_flex", "wrist_roll", "gripper"])
    rate_hz: float = 10.0
    max_input_age_s: float = 0.5
    stale_timeout_s: float = 2.0
    fail_safe: bool = True
    publish_actions: bool = True
    threshold: float = 0.0
    feature_labels_path: str = ""
    cameras: CameraSettings = field(default_factory=CameraSettings)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
    safe_stop: SafeStopSettings = field(default_factory=SafeStopSettings)

    def __post_init__(self) -> None:
        if len(self.cameras.topics) != len(self.cameras.features):
            raise SettingsError(
                f"cameras.topics ({len(self.cameras.topics)}) and cameras.features ({len(self.cameras.features)}) "
                "must have the same length"
            )
        if self.rate_hz <= 0:
            raise SettingsError(f"rate_hz={self.rate_hz} must be positive")

    @property
    def camera_map(self) -> dict[str, str]:
        """topic -> policy image feature."""
        return dict(zip(self.cameras.topics, self.cameras.features))


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


def from_flat(values: dict[str, Any]) -> PaiSettings:
    """Inverse of ``flatten``; unknown names are an error that lists the known ones."""
    known = flatten(PaiSettings())
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"Unknown settings {unknown}; known settings are {sorted(known)}")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(default) is not type(value) and not (isinstance(default, list) and isinstance(value, (list, tuple))):
            raise SettingsError(f"Setting {name}={value!r} should be a {type(default).__name__}")
        head, _, tail = name.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = list(value) if isinstance(value, tuple) else value
        else:
            nested[head] = list(value) if isinstance(value, tuple) else value
    sub = {"cameras": CameraSettings, "overlay": OverlayConfig, "alarm": AlarmConfig, "safe_stop": SafeStopSettings}
    try:
        for key, cls in sub.items():
            if key in nested:
                nested[key] = cls(**nested[key])
        return PaiSettings(**nested)
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
