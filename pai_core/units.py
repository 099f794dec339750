"""Robot units at the door: a per-joint map between what the robot publishes and what the policy was trained on.

ROS drivers publish ``sensor_msgs/JointState`` positions in radians; LeRobot SO-100/101 policies are trained on
LeRobot's motor units: degrees from the middle of the calibrated range (``use_degrees=True``), or -100..100 of
the calibrated range, and the gripper as 0..100 of its range. ``JointUnits`` turns the robot's state into the
policy's before the engine sees it, and the policy's actions back into the robot's units. ``check_states``
compares states with the policy's own normalisation statistics and names the joints that look like the wrong
units (radians fed to a degrees policy shrink a joint's spread 57 times; nothing else warns).

The LeRobot conversions follow ``lerobot.motors.motors_bus.MotorsBus._normalize`` / ``_unnormalize``
(lerobot 0.4.4) exactly, from motor ticks: a driver's radians become ticks as
``zero_ticks + rad * ticks_per_turn / (2 pi)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .settings import CONVERSIONS, SettingsError

LEROBOT_KEYS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
#: unit mistakes the check recognises: factor that makes the robot's values fit, and what it means.
UNIT_MISTAKES = (
    (180.0 / math.pi, "radians where the policy expects degrees"),
    (math.pi / 180.0, "degrees where the policy expects radians"),
)


@dataclass(frozen=True)
class MotorCalibration:
    """One motor of a LeRobot calibration file (``lerobot.motors.MotorCalibration``), in ticks."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    @property
    def mid(self) -> float:
        return (self.range_min + self.range_max) / 2


def load_calibration(path: str | Path) -> dict[str, MotorCalibration]:
    """LeRobot calibration JSON ({"shoulder_pan": {"id": 1, "drive_mode": 0, ...}, ...}) -> motor -> calibration."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"units.calibration_path {path}: no such file (LeRobot writes calibrations to "
            "~/.cache/huggingface/lerobot/calibration/robots/<robot type>/<id>.json)"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"Could not read the LeRobot calibration {path}: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise SettingsError(
            f"LeRobot calibration {path} should map motor names to calibrations, got {type(doc).__name__}"
        )
    out = {}
    for motor, entry in doc.items():
        missing = [k for k in LEROBOT_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise SettingsError(
                f"LeRobot calibration {path}: motor {motor!r} lacks {missing}; expected {list(LEROBOT_KEYS)}"
            )
        cal = MotorCalibration(**{k: int(entry[k]) for k in LEROBOT_KEYS})
        if cal.range_max <= cal.range_min:
            raise SettingsError(
                f"LeRobot calibration {path}: motor {motor!r} has range_min={cal.range_min} >= "
                f"range_max={cal.range_max}"
            )
        out[str(motor)] = cal
    return out


class JointUnits:
    """Per-joint map robot units <-> policy units (see ``UnitsSettings`` for the conversions).

    Args:
        names: joint names in the policy's state order.
        conversions: one of ``CONVERSIONS`` per joint (default: all "same").
        scale, offset: linear joints' ``policy = scale * robot + offset``.
        calibration: motor -> ``MotorCalibration`` for the lerobot_* conversions.
        calibration_names: each joint's motor name in ``calibration`` (default: the joint names).
        zero_ticks: each joint's motor ticks at 0 rad (default: ticks_per_turn / 2).
        ticks_per_turn: motor resolution.
    """

    def __init__(
        self,
        names: Sequence[str],
        conversions: Sequence[str] | None = None,
        scale: Sequence[float] | None = None,
        offset: Sequence[float] | None = None,
        calibration: dict[str, MotorCalibration] | None = None,
        calibration_names: Sequence[str] | None = None,
        zero_ticks: Sequence[float] | None = None,
        ticks_per_turn: int = 4096,
    ):
        self.names = list(names)
        n = len(self.names)
        self.conversions = list(conversions) if conversions else ["same"] * n
        self.scale = np.asarray(scale if scale else [1.0] * n, np.float64)
        self.offset = np.asarray(offset if offset else [0.0] * n, np.float64)
        self.zero_ticks = np.asarray(zero_ticks if zero_ticks else [ticks_per_turn / 2] * n, np.float64)
        self.ticks_per_turn = int(ticks_per_turn)
        motors = list(calibration_names) if calibration_names else list(self.names)
        for what, values in (
            ("conversions", self.conversions),
            ("scale", self.scale),
            ("offset", self.offset),
            ("zero_ticks", self.zero_ticks),
            ("calibration_names", motors),
        ):
            if len(values) != n:
                raise SettingsError(f"units.{what} has {len(values)} entries for {n} joints {self.names}")
        bad = [c for c in self.conversions if c not in CONVERSIONS]
        if bad:
            raise SettingsError(f"units.conversions {bad} are not among {list(CONVERSIONS)}")
        self.calibration: list[MotorCalibration | None] = []
        for joint, motor, conv in zip(self.names, motors, self.conversions):
            if not conv.startswith("lerobot_"):
                self.calibration.append(None)
                continue
            if not calibration or motor not in calibration:
                have = sorted(calibration) if calibration else []
                raise SettingsError(
                    f"joint {joint} ({conv}) needs motor {motor!r} in the LeRobot calibration, which "
                    f"has {have}; set units.calibration_names to the file's motor names"
                )
            self.calibration.append(calibration[motor])

    @classmethod
    def from_settings(cls, settings: Any) -> JointUnits:
        """From ``PaiSettings`` (reads ``units.calibration_path`` when a joint needs it)."""
        u = settings.units
        calibration = load_calibration(u.calibration_path) if u.calibration_path else None
        return cls(
            settings.joint_names,
            u.conversions,
            u.scale,
            u.offset,
            calibration,
            u.calibration_names,
            u.zero_ticks,
            u.ticks_per_turn,
        )

    @property
    def identity(self) -> bool:
        return all(c == "same" for c in self.conversions)

    # -------------------------------------------------------------------------------------- conversion
    def _ticks(self, j: int, rad: np.ndarray) -> np.ndarray:
        return self.zero_ticks[j] + rad * self.ticks_per_turn / (2 * math.pi)

    def _rad(self, j: int, ticks: np.ndarray) -> np.ndarray:
        return (ticks - self.zero_ticks[j]) * 2 * math.pi / self.ticks_per_turn

    def to_policy(self, robot: np.ndarray) -> np.ndarray:
        """(..., J) positions in the robot's units -> (..., J) float32 in the policy's."""
        x = np.asarray(robot, np.float64)
        self._check_width(x, "robot state")
        out = np.empty_like(x)
        for j, conv in enumerate(self.conversions):
            v = x[..., j]
            if conv == "same":
                out[..., j] = v
            elif conv == "degrees":
                out[..., j] = np.degrees(v)
            elif conv == "linear":
                out[..., j] = self.scale[j] * v + self.offset[j]
            else:
                out[..., j] = self._lerobot_normalize(j, conv, self._ticks(j, v))
        return out.astype(np.float32)

    def to_robot(self, policy: np.ndarray) -> np.ndarray:
        """(..., J) positions in the policy's units (an action) -> (..., J) float64 in the robot's."""
        x = np.asarray(policy, np.float64)
        self._check_width(x, "action")
        out = np.empty_like(x)
        for j, conv in enumerate(self.conversions):
            v = x[..., j]
            if conv == "same":
                out[..., j] = v
            elif conv == "degrees":
                out[..., j] = np.radians(v)
            elif conv == "linear":
                out[..., j] = (v - self.offset[j]) / self.scale[j]
            else:
                out[..., j] = self._rad(j, self._lerobot_unnormalize(j, conv, v))
        return out

    def _lerobot_normalize(self, j: int, conv: str, ticks: np.ndarray) -> np.ndarray:
        """``MotorsBus._normalize``: degrees ignore drive_mode and are not bounded; ranges are bounded."""
        cal = self.calibration[j]
        assert cal is not None
        lo, hi = cal.range_min, cal.range_max
        if conv == "lerobot_degrees":
            return (ticks - cal.mid) * 360.0 / (self.ticks_per_turn - 1)
        bounded = np.clip(ticks, lo, hi)
        if conv == "lerobot_range_m100_100":
            norm = (bounded - lo) / (hi - lo) * 200.0 - 100.0
            return -norm if cal.drive_mode else norm
        norm = (bounded - lo) / (hi - lo) * 100.0
        return 100.0 - norm if cal.drive_mode else norm

    def _lerobot_unnormalize(self, j: int, conv: str, value: np.ndarray) -> np.ndarray:
        """``MotorsBus._unnormalize``, without its truncation to whole ticks (the driver takes radians)."""
        cal = self.calibration[j]
        assert cal is not None
        lo, hi = cal.range_min, cal.range_max
        if conv == "lerobot_degrees":
            return value * (self.ticks_per_turn - 1) / 360.0 + cal.mid
        if conv == "lerobot_range_m100_100":
            value = -value if cal.drive_mode else value
            return (np.clip(value, -100.0, 100.0) + 100.0) / 200.0 * (hi - lo) + lo
        value = 100.0 - value if cal.drive_mode else value
        return np.clip(value, 0.0, 100.0) / 100.0 * (hi - lo) + lo

    def _check_width(self, x: np.ndarray, what: str) -> None:
        if x.shape[-1:] != (len(self.names),):
            raise SettingsError(
                f"{what} has shape {x.shape}; expected {len(self.names)} values, one per joint {self.names}"
            )

    def describe(self) -> dict[str, str]:
        """joint -> its conversion in words (diagnostics)."""
        out = {}
        for j, (name, conv) in enumerate(zip(self.names, self.conversions)):
            cal = self.calibration[j]
            if conv == "linear":
                out[name] = f"linear: policy = {self.scale[j]:g} * robot + {self.offset[j]:g}"
            elif cal is not None:
                out[name] = (
                    f"{conv}: range {cal.range_min}..{cal.range_max} ticks, drive_mode {cal.drive_mode}, "
                    f"0 rad at {self.zero_ticks[j]:g} ticks"
                )
            else:
                out[name] = {"same": "same units", "degrees": "radians -> degrees"}[conv]
        return out


# ------------------------------------------------------------------------------------------------ checks
def state_stats(preprocessor: Any) -> dict[str, np.ndarray] | None:
    """The policy's normalisation statistics of ``observation.state`` (mean, std, min, max ... as present), read
    from LeRobot's normalizer step of the preprocessor; None when the policy does not normalise its state."""
    for step in getattr(preprocessor, "steps", []):
        stats = getattr(step, "stats", None)
        if isinstance(stats, dict) and "observation.state" in stats:
            return {k: np.asarray(v, np.float64).reshape(-1) for k, v in stats["observation.state"].items()}
    return None


@dataclass
class JointCheck:
    """What the check found for one joint (values in the policy's units, after conversion)."""

    joint: str
    ok: bool
    reason: str
    median: float
    mean: float
    std: float
    z: float
    spread_ratio: float | None

    def line(self) -> str:
        if self.ok:
            return f"{self.joint}: ok (median {self.median:.4g}, policy mean {self.mean:.4g} std {self.std:.4g})"
        return f"{self.joint}: {self.reason}"


def check_states(
    states: np.ndarray,
    names: Sequence[str],
    stats: dict[str, np.ndarray],
    z_limit: float = 4.0,
    spread_limit: float = 15.0,
    min_samples: int = 10,
) -> list[JointCheck]:
    """Compare states (N, J) in the policy's units with its statistics; flag a joint whose median lies more than
    ``z_limit`` standard deviations from the policy's mean, or whose spread differs from the policy's more than
    ``spread_limit`` times while a unit mistake (``UNIT_MISTAKES``) would make it fit. A robot holding still says
    nothing about scale, so only a spread that a unit factor explains is flagged."""
    x = np.asarray(states, np.float64).reshape(-1, len(names))
    if "mean" in stats and "std" in stats:
        mean, std = stats["mean"], stats["std"]
    elif "min" in stats and "max" in stats:
        mean, std = (stats["min"] + stats["max"]) / 2, (stats["max"] - stats["min"]) / 4
    else:
        raise SettingsError(
            f"the policy's observation.state statistics have {sorted(stats)}; the units check needs "
            "mean and std (or min and max)"
        )
    if mean.size != len(names):
        raise SettingsError(
            f"the policy's observation.state statistics have {mean.size} values for {len(names)} joints {list(names)}"
        )
    out = []
    for j, name in enumerate(names):
        v = x[:, j]
        s = max(float(std[j]), 1e-6)
        med = float(np.median(v))
        z = (med - float(mean[j])) / s
        ratio = float(np.std(v)) / s if len(v) >= min_samples and np.std(v) > 0 else None
        reasons = []
        if abs(z) > z_limit:
            fits = [(f, what) for f, what in UNIT_MISTAKES if abs((med * f - mean[j]) / s) <= z_limit]
            hint = f"; x{fits[0][0]:.4g} fits: {fits[0][1]}?" if fits else ""
            reasons.append(
                f"median {med:.4g} is {abs(z):.1f} std from the policy's mean {mean[j]:.4g} (std {std[j]:.4g}){hint}"
            )
        if ratio is not None and not 1 / spread_limit <= ratio <= spread_limit:
            fits = [(f, what) for f, what in UNIT_MISTAKES if 1 / 5 <= ratio * f <= 5]
            if fits:
                f, what = fits[0]
                reasons.append(
                    f"moves {ratio:.3g}x the policy's spread (std {np.std(v):.4g} vs {std[j]:.4g}); "
                    f"x{f:.4g} fits: {what}?"
                )
        out.append(JointCheck(name, not reasons, "; ".join(reasons), med, float(mean[j]), float(std[j]), z, ratio))
    return out


def suspects(checks: Sequence[JointCheck]) -> list[str]:
    """Names of the joints that look like the wrong units."""
    return [c.joint for c in checks if not c.ok]
