"""rclpy back ends of ``pai_core.safe_stop.StopBackend``: std_srvs/Trigger and ros2_control's switch_controller.

Timeouts, retries and their record live in ``pai_core.safe_stop.SafeStop``; these only send one request and
report its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pai_core.safe_stop import Done, StopBackend, TopicOnly
from pai_core.settings import SafeStopSettings, SettingsError

SWITCH_CONTROLLER = "controller_manager_msgs/srv/SwitchController"


class ServiceStop:
    """Call one service per attempt; ``read(response) -> (ok, message)`` interprets the answer."""

    def __init__(
        self,
        node: Any,
        srv_type: type,
        service: str,
        make_request: Callable[[], Any],
        read: Callable[[Any], tuple[bool, str]],
        type_name: str,
    ):
        self.client = node.create_client(srv_type, service)
        self.make_request = make_request
        self.read = read
        self.target = f"{type_name} {self.client.srv_name}"

    def ready(self) -> bool:
        return self.client.service_is_ready()

    def call(self, done: Done) -> Any:
        future = self.client.call_async(self.make_request())

        def finished(f: Any) -> None:
            if f.cancelled():
                return
            try:
                ok, message = self.read(f.result())
            except Exception as exc:  # the call itself failed: say so
                done(False, f"call failed: {type(exc).__name__}: {exc}")
                return
            done(ok, message)

        future.add_done_callback(finished)
        return future

    def cancel(self, handle: Any) -> None:
        self.client.remove_pending_request(handle)
        handle.cancel()


def trigger(node: Any, service: str) -> ServiceStop:
    from std_srvs.srv import Trigger

    return ServiceStop(
        node, Trigger, service, Trigger.Request, lambda r: (bool(r.success), str(r.message)), "std_srvs/Trigger"
    )


def switch_controller_type() -> type:
    """controller_manager_msgs' SwitchController (a ros2_control installation brings it)."""
    try:
        from controller_manager_msgs.srv import SwitchController
    except ImportError as exc:
        raise SettingsError(
            f"safe_stop.backend=ros2_control needs the {SWITCH_CONTROLLER} service type, which is not "
            f"installed ({exc}): install ros2_control's controller_manager_msgs (ros-jazzy-controller-"
            "manager-msgs) or source the workspace that builds it"
        ) from None
    fields = SwitchController.Request.get_fields_and_field_types()
    if "deactivate_controllers" not in fields:
        raise SettingsError(
            f"{SWITCH_CONTROLLER} here has fields {sorted(fields)}; pai needs the Jazzy-or-newer "
            "request with deactivate_controllers"
        )
    return SwitchController


def ros2_control(node: Any, settings: SafeStopSettings) -> ServiceStop:
    """Deactivate ``settings.controllers`` through ``<controller_manager>/switch_controller``: the robot holds
    (or, depending on its hardware interface, goes limp) because no controller commands it any more."""
    from builtin_interfaces.msg import Duration

    SwitchController = switch_controller_type()
    strictness = {"strict": SwitchController.Request.STRICT, "best_effort": SwitchController.Request.BEST_EFFORT}
    timeout_ns = int(settings.timeout_s * 1e9)

    def request() -> Any:
        return SwitchController.Request(
            activate_controllers=[],
            deactivate_controllers=list(settings.controllers),
            strictness=strictness[settings.strictness],
            activate_asap=False,
            timeout=Duration(sec=timeout_ns // 1_000_000_000, nanosec=timeout_ns % 1_000_000_000),
        )

    def read(response: Any) -> tuple[bool, str]:
        message = str(getattr(response, "message", ""))
        text = f"deactivate {list(settings.controllers)}" + (f": {message}" if message else "")
        return bool(response.ok), text

    service = settings.controller_manager.rstrip("/") + "/switch_controller"
    return ServiceStop(node, SwitchController, service, request, read, SWITCH_CONTROLLER)


def make_backend(node: Any, settings: SafeStopSettings) -> StopBackend:
    """The back end ``safe_stop.backend`` names."""
    if settings.topic_only:
        return TopicOnly()
    if settings.backend == "ros2_control":
        return ros2_control(node, settings)
    return trigger(node, settings.service)
