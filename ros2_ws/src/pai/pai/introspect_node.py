"""The live introspection node: subscriptions, parameters, QoS and publishing around ``pai_core.live.LiveRunner``.

Callbacks only convert messages (``pai_core.ros_convert``) and hand them to the runner; a worker thread runs the
runner's loop (freshness gate, rate limit, watchdog, start-up grace, alarm edges, safe stop) and publishes what each
tick asks for (``frame_messages`` with the input header stamp in integer nanoseconds). Everything that is decided
rather than transported lives in the runner and is tested without ROS.
"""

from __future__ import annotations

import faulthandler
import sys
import threading
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

from pai_core import topics
from pai_core.errors import PaiError
from pai_core.live import LiveRunner, Status, Tick, check_device, check_paths
from pai_core.ros_convert import (
    OutputMessage,
    feature_names_message,
    frame_messages,
    image_msg_to_rgb,
    joint_state_to_vector,
    ns_to_stamp,
    stamp_to_ns,
)
from pai_core.ros_qos import message_class, output_qos
from pai_core.settings import PaiSettings, SettingsError

from . import parameters, safe_stop_clients
from .ros_msgs import to_rclpy

LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


class IntrospectNode(Node):
    def __init__(self) -> None:
        super().__init__(topics.NODE_NAME)
        self.settings: PaiSettings = parameters.declare(self)
        s = self.settings
        check_device(s.device)
        check_paths(s)
        backend = safe_stop_clients.make_backend(self, s.safe_stop)  # a missing service type fails before loading
        overrides = f", overrides {s.policy_overrides}" if s.policy_overrides else ""
        self.get_logger().info(
            f"loading policy {s.policy_path!r} (SAE {s.sae_path or 'none'}) on {s.device} in {s.model_dtype}{overrides}"
        )
        from pai_core.pipeline import Pipeline

        self.pipeline = Pipeline.from_settings(s)
        self.runner = LiveRunner(self.pipeline, s, backend, log=self._log)
        self._outputs: dict[str, Any] = {}
        self._stop = threading.Event()

        for topic, feature in s.camera_map.items():
            cls = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.create_subscription(
                cls, topic, lambda m, f=feature, t=topic: self._on_image(m, f, t), qos_profile_sensor_data
            )
        if self.pipeline.engine.state_dim:
            self.create_subscription(JointState, s.joint_states_topic, self._on_joints, qos_profile_sensor_data)
        self.create_service(Trigger, topics.RESET_ALARM, self._on_reset)
        self.diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        # a steady clock: with use_sim_time and no /clock yet, ROS time stands still and so would /diagnostics
        self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._publish(feature_names_message(self.pipeline))
        self._publish_alarm(False)
        self.worker = threading.Thread(
            target=self.runner.run, args=(self._stop, self._publish_tick), name="pai-engine", daemon=True
        )
        self.worker.start()
        command = "~/joint_command" if self.runner.command_names else "no ~/joint_command (action size differs)"
        self.get_logger().info(
            f"ready: cameras {s.camera_map}, joints {s.joint_states_topic}, {self.pipeline.n_features} SAE features, "
            f"threshold {self.pipeline.threshold}, safe stop: {self.runner.safe_stop.backend.target}, {command}, "
            f"start-up grace {s.startup_grace_s:g} s"
        )

    def _log(self, level: str, text: str) -> None:
        """The runner's log lines; one call site per severity (rclpy refuses two severities from one site)."""
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warn":
            logger.warning(text)
        elif level == "info":
            logger.info(text)
        else:
            logger.debug(text)

    # ---------------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Any, feature: str, topic: str) -> None:
        try:
            rgb = image_msg_to_rgb(msg)
        except (PaiError, ValueError) as exc:
            self.runner.input_error(topic, exc)
            return
        self.runner.add_image(topic, feature, stamp_to_ns(msg.header.stamp), rgb)

    def _on_joints(self, msg: JointState) -> None:
        topic = self.settings.joint_states_topic
        try:
            positions = joint_state_to_vector(msg, self.settings.joint_names)
        except (PaiError, ValueError) as exc:
            self.runner.input_error(topic, exc)
            return
        self.runner.add_joints(topic, stamp_to_ns(msg.header.stamp), positions)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.runner.request_reset()
        self._log("info" if response.success else "warn", response.message)
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
        self.settings = new
        self.runner.update_settings(new)
        self.get_logger().info(f"parameters changed: {changes}")
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------------------- outputs
    def _publish_tick(self, tick: Tick) -> None:
        if tick.frame is not None:
            s = self.settings
            for out in frame_messages(
                tick.frame,
                self.pipeline,
                s.overlay,
                compressed=True,
                actions=tick.actions,
                stamp=ns_to_stamp(tick.stamp_ns),
                command=tick.command,
            ):
                self._publish(out)
        if tick.alarm is not None:
            self._publish_alarm(tick.alarm)

    def _publish(self, out: OutputMessage) -> None:
        pub = self._outputs.get(out.topic)
        if pub is None:
            pub = self._outputs[out.topic] = self.create_publisher(
                message_class(out.msgtype), out.topic, output_qos(out.topic)
            )  # the shared table
        pub.publish(to_rclpy(out))

    def _publish_alarm(self, active: bool) -> None:
        for topic in (topics.ALARM, topics.SAFE_STOP):
            self._publish(OutputMessage(topic, "std_msgs/msg/Bool", {"data": active}))

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[_status(st) for st in self.runner.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)

    def shutdown(self) -> None:
        self._stop.set()
        self.worker.join(timeout=10.0)


def _status(st: Status) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=LEVELS[st.level],
        name=st.name,
        message=st.message,
        hardware_id="pai",
        values=[KeyValue(key=k, value=str(v)) for k, v in st.values.items()],
    )


def missing_params_files(args: list[str]) -> list[str]:
    """``--params-file`` arguments naming no file (rcl would fail with a parser traceback)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--params-file" and not Path(args[i + 1]).is_file()]


def main(args: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in native code (torch, OpenCV, rcl) prints every thread's Python stack
    argv = list(sys.argv if args is None else args)
    missing = missing_params_files(argv)
    if missing:
        print(f"[pai_introspector] error: --params-file {missing[0]}: no such file", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=args)
    except Exception as exc:  # rcl's RCLError for an unreadable params file or bad --ros-args
        print(f"[pai_introspector] error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    node = None
    try:
        node = IntrospectNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except PaiError as exc:  # bad configuration or model: one clear line, non-zero exit
        print(f"[pai_introspector] error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if rclpy.ok():
            raise
        # ctrl-c between start-up and spin: rclpy's signal handler shut the context down and the executor
        # raised its own error; that is the clean end ros2 launch asked for
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
