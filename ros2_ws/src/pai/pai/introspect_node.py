"""The live introspection node: a thin rclpy adapter over ``pai_core.pipeline.Pipeline``.

Callbacks only convert messages (``pai_core.ros_convert``) into the ``ObservationAssembler``; a worker
thread runs ``Pipeline.step`` on the newest complete observation (woken once every input has a new
message, at most ``rate_hz``), publishes ``frame_messages`` with the input header stamp, and drives the
safe stop and the watchdog.
"""

from __future__ import annotations

import collections
import statistics
import sys
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

from pai_core import topics
from pai_core.alarm import AlarmPolicy
from pai_core.errors import PaiError
from pai_core.ros_convert import (OutputMessage, feature_names_message, frame_messages, image_msg_to_rgb,
                                  joint_state_to_vector, stamp_to_ns)
from pai_core.settings import PaiSettings, SettingsError
from pai_core.sync import ObservationAssembler

from . import parameters
from .ros_msgs import message_class, to_rclpy

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
STREAM = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_TOPICS = (topics.ALARM, topics.SAFE_STOP, topics.FEATURE_NAMES)


class InputStats:
    """Per-input counters for /diagnostics (received messages are counted by the assembler)."""

    def __init__(self) -> None:
        self.errors: collections.Counter = collections.Counter()
        self.last_error: dict[str, str] = {}
        self.last_log: dict[str, float] = {}
        self.clock_jumps: collections.Counter = collections.Counter()
        self.last_stamp_ns: dict[str, int] = {}
        self.last_wall: dict[str, float] = {}


class IntrospectNode(Node):
    def __init__(self) -> None:
        super().__init__(topics.NODE_NAME)
        self.settings: PaiSettings = parameters.declare(self)
        s = self.settings
        self.get_logger().info(f"loading policy {s.policy_path!r} (SAE {s.sae_path or 'none'}) on {s.device}")
        from pai_core.pipeline import Pipeline

        self.pipeline = Pipeline.from_settings(s)
        self._check_compatible()
        engine = self.pipeline.engine
        self.assembler = ObservationAssembler(list(s.cameras.features), engine.state_dim > 0, s.max_input_age_s)
        self.inputs = InputStats()
        self._lock = threading.Lock()  # assembler, counters
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fresh: set[str] = set()  # inputs updated since the last observation was taken
        self._exact_stamps: collections.OrderedDict[float, tuple[int, int]] = collections.OrderedDict()
        self._reset_requested: str | None = None
        self._safe_stop_pending = False
        self._was_active = False
        self.frames = 0
        self.engine_errors = 0
        self.last_engine_error = ""
        self.latencies: collections.deque[float] = collections.deque(maxlen=200)
        self._frame_times: collections.deque[float] = collections.deque(maxlen=200)
        self.safe_stop_calls = 0
        self.last_state_coverage: float | None = None  # patch_knn: > 1 when the reference lacks the joint state
        self.safe_stop_result = ""
        self._outputs: dict[str, Any] = {}

        for topic, feature in s.camera_map.items():
            cls = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.create_subscription(cls, topic, lambda m, f=feature, t=topic: self._on_image(m, f, t),
                                     qos_profile_sensor_data)
        if engine.state_dim:
            self.create_subscription(JointState, s.joint_states_topic, self._on_joints, qos_profile_sensor_data)
        self.safe_stop_client = self.create_client(Trigger, s.safe_stop.service) if s.safe_stop.service else None
        self.create_service(Trigger, topics.RESET_ALARM, self._on_reset)
        self.diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._publish(feature_names_message(self.pipeline))
        self._publish_alarm(False)
        self._last_complete = time.monotonic()
        self.worker = threading.Thread(target=self._run, name="pai-engine", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"ready: cameras {s.camera_map}, joints {s.joint_states_topic}, "
            f"{self.pipeline.n_features} SAE features, threshold {self.pipeline.threshold}")

    # ------------------------------------------------------------------------------------ set-up checks
    def _check_compatible(self) -> None:
        engine, s = self.pipeline.engine, self.settings
        unknown = [f for f in s.cameras.features if f not in engine.camera_names]
        missing = [f for f in engine.camera_names if f not in s.cameras.features]
        if unknown or missing:
            raise SettingsError(f"cameras.features {s.cameras.features} must name each policy camera once; "
                                f"the policy expects {engine.camera_names}")
        if engine.state_dim and len(s.joint_names) != engine.state_dim:
            raise SettingsError(f"joint_names has {len(s.joint_names)} names {s.joint_names} but the policy's "
                                f"observation.state has {engine.state_dim} values")

    # ---------------------------------------------------------------------------------------- callbacks
    def _input_error(self, key: str, exc: Exception) -> None:
        text, now = str(exc), time.monotonic()
        with self._lock:
            self.inputs.errors[key] += 1
            repeated = self.inputs.last_error.get(key) == text and now - self.inputs.last_log.get(key, 0.0) < 1.0
            self.inputs.last_error[key] = text
            if not repeated:
                self.inputs.last_log[key] = now
        if not repeated:  # throttled per input and message, so different problems all show
            self.get_logger().warning(f"dropped message on {key}: {text}")

    def _check_clock(self, key: str, ns: int) -> None:
        last = self.inputs.last_stamp_ns.get(key)
        if last is not None and ns < last:
            self.inputs.clock_jumps[key] += 1
            self.get_logger().warning(f"clock jumped back on {key} by {(last - ns) / 1e9:.3f} s",
                                      throttle_duration_sec=1.0)
        self.inputs.last_stamp_ns[key] = ns
        self.inputs.last_wall[key] = time.monotonic()

    def _remember_stamp(self, stamp: Any) -> float:
        ns = stamp_to_ns(stamp)
        t = ns / 1e9
        self._exact_stamps[t] = (int(stamp.sec), int(stamp.nanosec))
        while len(self._exact_stamps) > 64:
            self._exact_stamps.popitem(last=False)
        return t

    def _on_image(self, msg: Any, feature: str, topic: str) -> None:
        try:
            rgb = image_msg_to_rgb(msg)
        except (PaiError, ValueError) as exc:
            self._input_error(topic, exc)
            return
        with self._lock:
            self._check_clock(topic, stamp_to_ns(msg.header.stamp))
            self.assembler.add_image(feature, self._remember_stamp(msg.header.stamp), rgb)
            self._mark_fresh(feature)

    def _on_joints(self, msg: JointState) -> None:
        topic = self.settings.joint_states_topic
        try:
            state = joint_state_to_vector(msg, self.settings.joint_names)
        except (PaiError, ValueError) as exc:
            self._input_error(topic, exc)
            return
        with self._lock:
            self._check_clock(topic, stamp_to_ns(msg.header.stamp))
            self.assembler.add_state(self._remember_stamp(msg.header.stamp), state)
            self._mark_fresh("observation.state")

    def _mark_fresh(self, key: str) -> None:
        """Wake the engine once every input has a new message: cameras published on separate topics
        arrive in any order, and combining a new frame of one camera with the previous frame of another
        would show the policy an observation that never existed (caller holds the lock)."""
        self._fresh.add(key)
        if self._fresh.issuperset(self.assembler.required):
            self._wake.set()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        state = self.pipeline.alarm.state
        self._reset_requested = state.reason or "not active"
        self._wake.set()
        response.success = True
        response.message = f"alarm reset (was: {state.reason or 'not active'})"
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        fixed = [n for n in changes if not parameters.is_runtime(n)]
        if fixed:
            return SetParametersResult(successful=False, reason=f"{fixed} are read at start; restart the node")
        try:
            new = parameters.current(self, changes)
        except SettingsError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        old, self.settings = self.settings, new
        self.pipeline.threshold_override = new.threshold if new.threshold > 0 else None
        if new.alarm != old.alarm:
            policy = AlarmPolicy(new.alarm)
            policy.state = self.pipeline.alarm.state
            self.pipeline.alarm = policy
        self.assembler.max_age_s = new.max_input_age_s
        self.get_logger().info(f"parameters changed: {changes}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------------ worker
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._tick()
            except Exception as exc:  # never let the worker die silently: fail safe and keep going
                self._engine_failure(exc)
            period = 1.0 / self.settings.rate_hz
            if self._frame_times:
                self._stop.wait(max(0.0, self._frame_times[-1] + period - time.monotonic()))

    def _tick(self) -> None:
        if self._reset_requested is not None:
            self._reset_requested = None
            self.pipeline.alarm.reset()
            self._was_active = False
            self._publish_alarm(False)
        obs, stamp = None, None
        with self._lock:
            if self._fresh.issuperset(self.assembler.required):
                self._fresh.clear()
                obs = self.assembler.take()
                if obs is not None:
                    stamp = self._exact_stamps.get(obs.timestamp)
        now = time.monotonic()
        if obs is None:
            self._watchdog(now)
            self._after_frame()
            return
        self._last_complete = now
        self._frame_times.append(now)
        frame = self.pipeline.step(obs)
        self.last_state_coverage = frame.state_coverage
        s = self.settings
        for out in frame_messages(frame, self.pipeline, s.overlay, compressed=True,
                                  actions=s.publish_actions, stamp=stamp):
            self._publish(out)
        self.frames += 1
        self.latencies.append((time.monotonic() - now) * 1000.0)
        self._after_frame()

    def _watchdog(self, now: float) -> None:
        stale = now - self._last_complete
        if self.settings.fail_safe and stale > self.settings.stale_timeout_s:
            missing = self.assembler.missing()
            ages = {k: round(now - t, 2) for k, t in self.inputs.last_wall.items()}
            self.pipeline.alarm.fault(f"stale inputs: no complete observation for {stale:.1f} s "
                                      f"(missing {missing}, seconds since last message {ages})")

    def _engine_failure(self, exc: Exception) -> None:
        self.engine_errors += 1
        self.last_engine_error = f"{type(exc).__name__}: {exc}"
        self.get_logger().error(f"engine failure: {self.last_engine_error}", throttle_duration_sec=1.0)
        if self.settings.fail_safe:
            self.pipeline.alarm.fault(f"engine failure: {self.last_engine_error}")
        self._after_frame()

    def _after_frame(self) -> None:
        """Alarm edges: latch the stop topic and call the safe-stop service once per rising edge."""
        state = self.pipeline.alarm.state
        if state.active and not self._was_active:
            self.get_logger().error(f"ALARM: {state.reason}")
            self._publish_alarm(True)
            self._safe_stop_pending = True
        self._was_active = state.active
        if self._safe_stop_pending and self.safe_stop_client is not None:
            if self.safe_stop_client.service_is_ready():
                self._safe_stop_pending = False
                self.safe_stop_calls += 1
                future = self.safe_stop_client.call_async(Trigger.Request())
                future.add_done_callback(self._safe_stop_done)
            else:
                self.safe_stop_result = f"service {self.settings.safe_stop.service} not available (retrying)"
        elif self._safe_stop_pending:
            self._safe_stop_pending = False

    def _safe_stop_done(self, future: Any) -> None:
        try:
            res = future.result()
            self.safe_stop_result = f"success={res.success} {res.message}"
        except Exception as exc:  # the robot's service failed: say so
            self.safe_stop_result = f"call failed: {exc}"
        self.get_logger().warning(f"safe stop {self.settings.safe_stop.service}: {self.safe_stop_result}")

    # ----------------------------------------------------------------------------------------- outputs
    def _publish(self, out: OutputMessage) -> None:
        pub = self._outputs.get(out.topic)
        if pub is None:
            qos = LATCHED if out.topic in LATCHED_TOPICS else STREAM
            pub = self._outputs[out.topic] = self.create_publisher(message_class(out.msgtype), out.topic, qos)
        pub.publish(to_rclpy(out))

    def _publish_alarm(self, active: bool) -> None:
        for topic in (topics.ALARM, topics.SAFE_STOP):
            self._publish(OutputMessage(topic, "std_msgs/msg/Bool", {"data": active}))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            st = self.assembler.stats
            inputs = {
                "received": dict(st.received), "superseded (dropped)": dict(st.superseded),
                "malformed": dict(self.inputs.errors), "clock jumps back": dict(self.inputs.clock_jumps),
                "incomplete ticks": st.incomplete, "inputs too far apart": st.too_far_apart,
            }
            last_errors = dict(self.inputs.last_error)
        recent = [t for t in self._frame_times if now - t <= 5.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        lat = sorted(self.latencies)
        alarm = self.pipeline.alarm.state
        bad_inputs = bool(last_errors) or bool(self.inputs.clock_jumps)
        statuses = [
            _status("pai_introspector: inputs", DiagnosticStatus.WARN if bad_inputs else DiagnosticStatus.OK,
                    "; ".join(f"{k}: {v}" for k, v in last_errors.items()) or "ok",
                    {**{k: str(v) for k, v in inputs.items()}, **{f"last error {k}": v for k, v in last_errors.items()}}),
            _status("pai_introspector: engine", DiagnosticStatus.ERROR if self.engine_errors else DiagnosticStatus.OK,
                    self.last_engine_error or "running",
                    {"policy": self.settings.policy_path, "sae": self.settings.sae_path, "device": self.settings.device,
                     "frames": str(self.frames), "rate_hz": f"{rate:.2f}", "target_rate_hz": str(self.settings.rate_hz),
                     "latency_ms_median": f"{statistics.median(lat):.1f}" if lat else "",
                     "latency_ms_p99": f"{lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.1f}" if lat else "",
                     "engine_errors": str(self.engine_errors), "n_features": str(self.pipeline.n_features)}),
            _status("pai_introspector: alarm", DiagnosticStatus.ERROR if alarm.active else DiagnosticStatus.OK,
                    alarm.reason or "clear",
                    {"active": str(alarm.active), "threshold": str(self.pipeline.threshold),
                     "frames_above": str(alarm.above), "safe_stop_service": self.settings.safe_stop.service,
                     "safe_stop_calls": str(self.safe_stop_calls), "safe_stop_result": self.safe_stop_result,
                     "state_coverage": "" if self.last_state_coverage is None else f"{self.last_state_coverage:.2f}",
                     **{k: str(v) for k, v in self.pipeline.ood_summary().items()}}),
        ]
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self.worker.join(timeout=10.0)


def _status(name: str, level: bytes, message: str, values: dict[str, str]) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id="pai",
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = IntrospectNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except PaiError as exc:  # bad configuration or model: one clear line, non-zero exit
        print(f"[pai_introspector] error: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
