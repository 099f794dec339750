"""The live runner: every decision the ROS node makes, without ROS.

The node subscribes, converts messages (``ros_convert``), publishes and serves; ``LiveRunner`` decides. It keeps
the newest input of each camera and the joint states (converted to the policy's units at the door), wakes the
engine once every input has a new message (the freshness gate: a new frame of one camera combined with the old
frame of another is an observation that never existed), runs it at most ``rate_hz``, and carries each input's
header stamp as integer nanoseconds to the outputs. It owns the watchdog (stale inputs; before the first complete
observation, the start-up grace), the alarm edges and the safe stop they drive (``safe_stop.SafeStop``), resets
that say when they cannot hold, the live units check, and the content of ``/diagnostics``.
Tested without ROS (tests/test_live.py); the clock is injectable.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .alarm import AlarmPolicy
from .ros_convert import JointCommand
from .safe_stop import SafeStop, StopBackend
from .settings import PaiSettings, SettingsError
from .sync import ObservationAssembler
from .units import JointCheck, JointUnits, check_states, state_stats, suspects

Level = Literal["ok", "warn", "error"]
Log = Callable[[str, str], None]  # (level: "debug" | "info" | "warn" | "error", text)
STATE = "observation.state"
UNITS_WINDOW = 100  # recent states the live units check looks at
UNITS_MIN_SAMPLES = 10


@dataclass
class Status:
    """One /diagnostics entry, transport-free (the node turns it into diagnostic_msgs/DiagnosticStatus)."""

    name: str
    level: Level
    message: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Tick:
    """What one engine tick asks the node to publish.

    Args:
        frame: the pipeline's output, or None (no new complete observation, or the engine failed).
        stamp_ns: the observation's header stamp (newest input), integer nanoseconds.
        actions: publish the action outputs of ``frame`` (off while the alarm holds or by settings).
        command: the next action in the robot's units (``~/joint_command``), when the action maps onto the joints.
        alarm: the alarm state to publish on the latched ``~/alarm`` and ``~/safe_stop`` topics (an edge), else None.
    """

    frame: Any = None
    stamp_ns: int | None = None
    actions: bool = False
    command: JointCommand | None = None
    alarm: bool | None = None


class InputStats:
    """Per-input counters for /diagnostics (received messages are counted by the assembler)."""

    def __init__(self) -> None:
        self.errors: collections.Counter = collections.Counter()
        self.last_error: dict[str, str] = {}
        self.clock_jumps: collections.Counter = collections.Counter()
        self.last_stamp_ns: dict[str, int] = {}
        self.last_wall: dict[str, float] = {}


# -------------------------------------------------------------------------------------------- start checks
def check_device(device: str, cuda_devices: int | None = None) -> None:
    """Refuse a CUDA device torch cannot see, in one line, before any model is loaded.

    Args:
        cuda_devices: GPUs torch sees (default: asks torch).
    """
    if not device.startswith("cuda"):
        return
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if cuda_devices == 0:
        raise SettingsError(
            f"device={device!r} but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
            "use device: cpu, or run where a GPU and a CUDA build of torch are installed"
        )
    if index >= cuda_devices:
        raise SettingsError(
            f"device={device!r} but torch sees {cuda_devices} CUDA GPU(s): cuda:0 .. cuda:{cuda_devices - 1}"
        )


def check_paths(settings: PaiSettings) -> None:
    """Local files and folders the settings name exist, so a missing one says so instead of a hub error."""
    from .policy import looks_like_path

    cwd = Path.cwd()
    if not settings.policy_path:
        raise SettingsError("policy_path is empty; set it to a LeRobot pretrained_model directory or a hub id")
    for name in ("policy_path", "sae_path"):
        value = getattr(settings, name)
        if value and not Path(value).expanduser().exists() and looks_like_path(value):
            raise SettingsError(
                f"{name}={value!r}: no such directory (relative paths are relative to the working "
                f"directory, {cwd}); a hub id has the form 'user/name'"
            )
    for name, value in (
        ("ood_params_path", settings.ood_params_path),
        ("feature_labels_path", settings.feature_labels_path),
        ("units.calibration_path", settings.units.calibration_path),
    ):
        if value and not Path(value).expanduser().is_file():
            raise SettingsError(
                f"{name}={value!r}: no such file (relative paths are relative to the working directory, {cwd})"
            )


def check_compatible(engine: Any, settings: PaiSettings) -> None:
    """The settings' cameras and joints are the policy's."""
    unknown = [f for f in settings.cameras.features if f not in engine.camera_names]
    missing = [f for f in engine.camera_names if f not in settings.cameras.features]
    if unknown or missing:
        raise SettingsError(
            f"cameras.features {settings.cameras.features} must name each policy camera once; "
            f"the policy expects {engine.camera_names}"
        )
    if engine.state_dim and len(settings.joint_names) != engine.state_dim:
        raise SettingsError(
            f"joint_names has {len(settings.joint_names)} names {settings.joint_names} but the "
            f"policy's observation.state has {engine.state_dim} values"
        )


class LiveRunner:
    """Freshness gate, rate limit, watchdog, start-up grace, alarm edges, safe stop, units and diagnostics.

    Args:
        pipeline: a loaded ``Pipeline``.
        settings: validated ``PaiSettings``.
        backend: how the safe stop asks the robot (``safe_stop.StopBackend``).
        clock: monotonic seconds.
        log: ``log(level, text)``.
        units: robot <-> policy units (default: from ``settings.units``).
    """

    def __init__(
        self,
        pipeline: Any,
        settings: PaiSettings,
        backend: StopBackend,
        clock: Callable[[], float] = time.monotonic,
        log: Log | None = None,
        units: JointUnits | None = None,
    ):
        self.pipeline = pipeline
        self.settings = settings
        self.clock = clock
        self.log: Log = log or (lambda level, text: None)
        engine = pipeline.engine
        check_compatible(engine, settings)
        self.units = units if units is not None else JointUnits.from_settings(settings)
        self.command_names: list[str] | None = None
        if engine.action_dim == len(settings.joint_names):
            self.command_names = list(settings.joint_names)
        elif not self.units.identity:
            raise SettingsError(
                f"the policy's action has {engine.action_dim} values but joint_names has "
                f"{len(settings.joint_names)} joints: actions cannot go back to the robot's units"
            )
        s = settings.safe_stop
        self.safe_stop = SafeStop(backend, s.timeout_s, s.retry_s, s.retry_max_s, clock, self.log)
        self.assembler = ObservationAssembler(
            list(settings.cameras.features), engine.state_dim > 0, settings.max_input_age_s
        )
        self.topic_of = {f: t for t, f in settings.camera_map.items()}
        if engine.state_dim:
            self.topic_of[STATE] = settings.joint_states_topic
        self.inputs = InputStats()
        self._lock = threading.Lock()  # inputs: assembler, stamps, counters
        self._wake = threading.Event()
        self._fresh: set[str] = set()
        self._stamps_ns: dict[str, int] = {}
        self._throttle: dict[str, tuple[str, float]] = {}
        self._reset_pending: str | None = None
        self._was_active = False
        self._published: bool | None = False  # the node publishes "no alarm" when it starts
        self.started = clock()
        self.first_complete: float | None = None
        self.last_complete: float | None = None
        self.frames = 0
        self.engine_errors = 0
        self.last_engine_error = ""
        self._last_failed = False
        self.latencies: collections.deque[float] = collections.deque(maxlen=200)
        self.frame_times: collections.deque[float] = collections.deque(maxlen=200)
        self.last_state_coverage: float | None = None
        self.state_window: collections.deque[np.ndarray] = collections.deque(maxlen=UNITS_WINDOW)
        self.stats = state_stats(engine.loaded.preprocessor) if engine.state_dim else None
        self.units_checks: list[JointCheck] = []
        self._suspects: list[str] = []

    # ------------------------------------------------------------------------------------------ inputs
    def add_image(self, topic: str, feature: str, stamp_ns: int, rgb: np.ndarray) -> None:
        """A decoded camera image (RGB) with its header stamp."""
        with self._lock:
            self._note_stamp(topic, stamp_ns)
            self.assembler.add_image(feature, stamp_ns / 1e9, rgb)
            self._stamps_ns[feature] = int(stamp_ns)
            self._mark_fresh(feature)

    def add_joints(self, topic: str, stamp_ns: int, positions: np.ndarray) -> None:
        """Joint positions in the robot's units, in ``joint_names`` order; converted to the policy's here."""
        state = self.units.to_policy(positions)
        with self._lock:
            self._note_stamp(topic, stamp_ns)
            self.assembler.add_state(stamp_ns / 1e9, state)
            self._stamps_ns[STATE] = int(stamp_ns)
            self._mark_fresh(STATE)

    def input_error(self, topic: str, exc: Exception) -> None:
        """A message that could not be used: counted, and logged once a second per input and problem."""
        text = str(exc)
        with self._lock:
            self.inputs.errors[topic] += 1
            self.inputs.last_error[topic] = text
        self._log_throttled(f"error {topic}", "warn", f"dropped message on {topic}: {text}")

    def _note_stamp(self, topic: str, ns: int) -> None:
        last = self.inputs.last_stamp_ns.get(topic)
        if last is not None and ns < last:
            self.inputs.clock_jumps[topic] += 1
            self._log_throttled(
                f"jump {topic}", "warn", f"clock jumped back on {topic} by {(last - ns) / 1e9:.3f} s", same_text=False
            )
        self.inputs.last_stamp_ns[topic] = int(ns)
        self.inputs.last_wall[topic] = self.clock()

    def _mark_fresh(self, key: str) -> None:
        """Wake the engine once every input has a new message (caller holds the lock)."""
        self._fresh.add(key)
        if self._fresh.issuperset(self.assembler.required):
            self._wake.set()

    def _log_throttled(self, key: str, level: str, text: str, period: float = 1.0, same_text: bool = True) -> None:
        now = self.clock()
        last_text, last_t = self._throttle.get(key, ("", -1e18))
        if now - last_t < period and (last_text == text or not same_text):
            return
        self._throttle[key] = (text, now)
        self.log(level, text)

    # ------------------------------------------------------------------------------------------ control
    def request_reset(self) -> tuple[bool, str]:
        """``~/reset_alarm``: (success, answer). A reset the watchdog would undo at once is refused and says why."""
        state = self.pipeline.alarm.state
        was = state.reason if state.active else "not active"
        stale = self.stale_reason(self.clock()) if self.settings.fail_safe else None
        if stale:
            held = f" (the alarm holds for: {was})" if was.split(":")[0] != stale.split(":")[0] else ""
            return False, (
                f"alarm not reset: {stale}; the watchdog would raise it again at once, so restore the "
                f"inputs first{held}"
            )
        self._reset_pending = was
        self._wake.set()
        answer = f"alarm reset (was: {was})"
        if self._last_failed:
            answer += (
                f"; the engine failed on the last frame ({self.last_engine_error}): the alarm rises again if "
                "it fails again"
            )
        return True, answer

    def update_settings(self, new: PaiSettings) -> None:
        """Run-time parameter changes (threshold, alarm, timings, overlay, publishing)."""
        old, self.settings = self.settings, new
        self.pipeline.threshold_override = new.threshold if new.threshold > 0 else None
        if new.alarm != old.alarm:
            policy = AlarmPolicy(new.alarm)
            policy.state = self.pipeline.alarm.state
            self.pipeline.alarm = policy
        with self._lock:
            self.assembler.max_age_s = new.max_input_age_s

    # ------------------------------------------------------------------------------------------- engine
    def run(self, stop: threading.Event, publish: Callable[[Tick], None]) -> None:
        """The worker loop: wake on fresh inputs (or every 0.1 s for the watchdog), tick, publish, keep the rate."""
        while not stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                publish(self.tick())
            except Exception as exc:  # publishing failed: fail safe and publish the alarm edge again next tick
                self._engine_failure(exc)
                self._published = None
            if self.frame_times:
                stop.wait(max(0.0, self.frame_times[-1] + 1.0 / self.settings.rate_hz - self.clock()))

    def tick(self) -> Tick:
        """One step: apply a pending reset, run the newest complete observation if every input is fresh (else
        the watchdog), then the alarm edges and the safe stop."""
        now = self.clock()
        out = Tick()
        if self._reset_pending is not None:
            self._reset_pending = None
            # monitoring starts over: the alarm window and latch, the scorers' history (action consistency
            # must not compare a chunk with one from before the reset) and LeRobot's action queue
            self.pipeline.reset()
            self._published = None  # a reset always (re)publishes the latched alarm topics
        obs = None
        with self._lock:
            if self._fresh.issuperset(self.assembler.required):
                self._fresh.clear()
                obs = self.assembler.take()
                if obs is not None:
                    obs.stamp_ns = max(self._stamps_ns[k] for k in self.assembler.required)
        if obs is None:
            self._watchdog(now)
        else:
            if self.first_complete is None:
                self.first_complete = now
                self.log("info", f"first complete observation {now - self.started:.1f} s after start")
            self.last_complete = now
            self.frame_times.append(now)
            try:
                frame = self.pipeline.step(obs)
            except Exception as exc:  # never let the worker die silently: fail safe and keep going
                self._engine_failure(exc)
            else:
                self._publishable(frame, obs, out)
                self.latencies.append((self.clock() - now) * 1000.0)
        out.alarm = self._edges()
        self.safe_stop.poll()
        return out

    def _publishable(self, frame: Any, obs: Any, out: Tick) -> None:
        self._last_failed = False
        self.frames += 1
        frame.alarm = self.pipeline.alarm.state  # faults too, also for a policy without OOD
        self.last_state_coverage = getattr(frame, "state_coverage", None)
        if obs.state is not None:
            self.state_window.append(np.asarray(obs.state, np.float64))
        out.frame, out.stamp_ns = frame, int(obs.stamp_ns)
        out.actions = self.settings.publish_actions and not frame.alarm.active
        if out.actions and self.command_names is not None:
            out.command = JointCommand(self.command_names, self.units.to_robot(np.asarray(frame.result.action)))

    def _engine_failure(self, exc: Exception) -> None:
        self.engine_errors += 1
        self._last_failed = True
        self.last_engine_error = f"{type(exc).__name__}: {exc}"
        self._log_throttled("engine", "error", f"engine failure: {self.last_engine_error}")
        if self.settings.fail_safe:
            self.pipeline.alarm.fault(f"engine failure: {self.last_engine_error}")

    def stale_reason(self, now: float) -> str | None:
        """Why monitoring is impossible now (no complete observation for too long), or None. Before the first
        complete observation the limit is ``startup_grace_s``, after it ``stale_timeout_s``."""
        s = self.settings
        if self.last_complete is None:
            waited = now - self.started
            if waited <= s.startup_grace_s:
                return None
            return (
                f"no complete observation since start: {waited:.1f} s, longer than startup_grace_s="
                f"{s.startup_grace_s:g} ({self._waiting_for(now)})"
            )
        gap = now - self.last_complete
        if gap <= s.stale_timeout_s:
            return None
        return f"stale inputs: no complete observation for {gap:.1f} s ({self._waiting_for(now)})"

    def _waiting_for(self, now: float) -> str:
        never = [self.topic_of.get(k, k) for k in self.assembler.missing()]
        ages = {t: round(now - w, 2) for t, w in self.inputs.last_wall.items()}
        return (f"never received {never}, " if never else "") + f"seconds since last message {ages}"

    def _watchdog(self, now: float) -> None:
        if self.settings.fail_safe:
            reason = self.stale_reason(now)
            if reason:
                self.pipeline.alarm.fault(reason)

    def _edges(self) -> bool | None:
        """Rising alarm: ask for the safe stop; falling: stop asking. Returns the state to publish, on change."""
        state = self.pipeline.alarm.state
        if state.active != self._was_active:
            self._was_active = state.active
            if state.active:
                self.log("error", f"ALARM: {state.reason}")
                self.safe_stop.request(state.reason)
            else:
                self.log("info", "alarm cleared")
                self.safe_stop.cancel()
        if state.active != self._published:
            self._published = state.active
            return state.active
        return None

    # -------------------------------------------------------------------------------------- diagnostics
    def check_units(self) -> list[JointCheck]:
        """The live units check over the recent states; logs when the joints that look wrong change."""
        if not (self.settings.units.check and self.stats is not None and len(self.state_window) >= UNITS_MIN_SAMPLES):
            return self.units_checks
        try:
            self.units_checks = check_states(np.stack(list(self.state_window)), self.settings.joint_names, self.stats)
        except SettingsError as exc:
            self._log_throttled("units", "warn", f"joint units check impossible: {exc}", period=60.0)
            return self.units_checks
        bad = suspects(self.units_checks)
        if bad != self._suspects:
            self._suspects = bad
            if bad:
                self.log(
                    "warn",
                    "joint states look like the wrong units for "
                    + "; ".join(c.line() for c in self.units_checks if not c.ok)
                    + " (see units.conversions)",
                )
            else:
                self.log("info", "joint states fit the policy's statistics again")
        return self.units_checks

    def diagnostics(self) -> list[Status]:
        """The content of /diagnostics: inputs, engine, start-up, alarm, safe stop and joint units."""
        now = self.clock()
        s = self.settings
        with self._lock:
            st = self.assembler.stats
            inputs = {
                "received": dict(st.received),
                "superseded (dropped)": dict(st.superseded),
                "malformed": dict(self.inputs.errors),
                "clock jumps back": dict(self.inputs.clock_jumps),
                "incomplete ticks": st.incomplete,
                "inputs too far apart": st.too_far_apart,
            }
            last_errors = dict(self.inputs.last_error)
        recent = [t for t in self.frame_times if now - t <= 5.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        lat = sorted(self.latencies)
        alarm = self.pipeline.alarm.state
        bad_inputs = bool(last_errors) or bool(self.inputs.clock_jumps)
        statuses = [
            Status(
                "pai_introspector: inputs",
                "warn" if bad_inputs else "ok",
                "; ".join(f"{k}: {v}" for k, v in last_errors.items()) or "ok",
                {**{k: str(v) for k, v in inputs.items()}, **{f"last error {k}": v for k, v in last_errors.items()}},
            ),
            Status(
                "pai_introspector: engine",
                "error" if self.engine_errors else "ok",
                self.last_engine_error or "running",
                {
                    "policy": s.policy_path,
                    "sae": s.sae_path,
                    "device": s.device,
                    "frames": str(self.frames),
                    "rate_hz": f"{rate:.2f}",
                    "target_rate_hz": str(s.rate_hz),
                    "latency_ms_median": f"{statistics.median(lat):.1f}" if lat else "",
                    "latency_ms_p99": f"{lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.1f}" if lat else "",
                    "engine_errors": str(self.engine_errors),
                    "n_features": str(self.pipeline.n_features),
                },
            ),
            self._startup_status(now),
            Status(
                "pai_introspector: alarm",
                "error" if alarm.active else "ok",
                alarm.reason or "clear",
                {
                    "active": str(alarm.active),
                    "threshold": str(self.pipeline.threshold),
                    "frames_above": str(alarm.above),
                    "fail_safe": str(s.fail_safe),
                    "stale_timeout_s": f"{s.stale_timeout_s:g}",
                    "state_coverage": "" if self.last_state_coverage is None else f"{self.last_state_coverage:.2f}",
                    **{k: str(v) for k, v in self.pipeline.ood_summary().items()},
                },
            ),
            self._safe_stop_status(),
            self._units_status(),
        ]
        return statuses

    def _startup_status(self, now: float) -> Status:
        grace = self.settings.startup_grace_s
        values = {"startup_grace_s": f"{grace:g}"}
        if self.first_complete is not None:
            after = self.first_complete - self.started
            values["first_complete_observation_after_s"] = f"{after:.2f}"
            return Status(
                "pai_introspector: start-up", "ok", f"first complete observation {after:.1f} s after start", values
            )
        waited = now - self.started
        values["waiting_s"] = f"{waited:.1f}"
        if waited > grace:
            return Status(
                "pai_introspector: start-up",
                "error",
                f"no complete observation within the start-up grace of {grace:g} s ({self._waiting_for(now)})",
                values,
            )
        return Status(
            "pai_introspector: start-up",
            "ok",
            f"waiting for the first complete observation ({waited:.1f} "
            f"of {grace:g} s start-up grace; {self._waiting_for(now)})",
            values,
        )

    def _safe_stop_status(self) -> Status:
        stop = self.safe_stop
        values = stop.summary()
        last = stop.attempts[-1] if stop.attempts else None
        failing = stop.state == "stopping" and last is not None and last.outcome not in ("pending", "success")
        level: Level = "error" if failing else "warn" if stop.state == "stopping" else "ok"
        message = {
            "idle": "idle",
            "stopped": "robot answered: stopped",
            "cancelled": "alarm reset before the robot answered",
            "stopping": f"asking {stop.backend.target} to stop",
        }[stop.state]
        if last is not None:
            message += f" (attempt {last.number}: {last.line()})"
        return Status("pai_introspector: safe stop", level, message, values)

    def _units_status(self) -> Status:
        values = {f"units {k}": v for k, v in self.units.describe().items()}
        if not self.settings.units.check or not self.pipeline.engine.state_dim:
            return Status("pai_introspector: joint units", "ok", "not checked", values)
        if self.stats is None:
            return Status(
                "pai_introspector: joint units",
                "ok",
                "not checked: the policy has no normalisation statistics for observation.state",
                values,
            )
        checks = self.check_units()
        if not checks:
            return Status(
                "pai_introspector: joint units",
                "ok",
                f"not checked yet ({len(self.state_window)} of {UNITS_MIN_SAMPLES} states)",
                values,
            )
        values.update({f"check {c.joint}": c.line() for c in checks})
        bad = [c for c in checks if not c.ok]
        if bad:
            return Status(
                "pai_introspector: joint units",
                "warn",
                "joints that look like the wrong units: " + "; ".join(c.line() for c in bad),
                values,
            )
        return Status(
            "pai_introspector: joint units",
            "ok",
            f"states fit the policy's statistics ({len(self.state_window)} recent states)",
            values,
        )
