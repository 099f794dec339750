"""The live node as users run it: a process started with ``--ros-args --params-file``, a real small ACT
policy, a quickly trained SAE and conformal OOD parameters, real rclpy over loopback-only Fast DDS.

The tests share one node process and run in file order (start-up under sim time, outputs, replay equality, bad
messages, OOD alarm and safe stop, reset, parameters, stale inputs and a reset that cannot hold); the last ones start
nodes with bad parameters.
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
CAMS = {"observation.images.front": (48, 64), "observation.images.wrist": (48, 64)}
FRONT, WRIST = "/pai_test/front/image_raw", "/pai_test/wrist/image_raw/compressed"
JOINTS_TOPIC = "/pai_test/joint_states"
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
SAFE_STOP_SERVICE = "/pai_test/safe_stop"
NS = "/pai_introspector"
STALE_S = 1.5  # set at run time by the stale-input test
START_STALE_S = 1.0  # the shared node starts impatient: the start-up grace must keep it quiet until inputs come
PATIENT_STALE_S = 30.0  # set by the start-up test for the tests in between


def require_loopback_dds() -> None:
    profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    assert profile and Path(profile).is_file(), (
        "ROS tests must run with the loopback-only Fast DDS profile: source scripts/test_env.sh or use "
        "scripts/run_tests.sh (FASTDDS_DEFAULT_PROFILES_FILE is not set)"
    )


def observation(t: float, variant: str = "clean", seed: int = 0):
    from pai_core.observation import Observation
    from pai_core.testing import synthetic_frame

    images = {k: synthetic_frame(h, w, t % 1.0, variant, seed=seed + i) for i, (k, (h, w)) in enumerate(CAMS.items())}
    return Observation(images=images, state=np.sin(np.arange(6) + 6.28 * t).astype(np.float32), timestamp=t)


def build_models(root: Path) -> dict:
    """Policy, an SAE trained for 300 steps on clean tokens, and OOD params calibrated through Pipeline."""
    import torch

    from pai_core.ood import calibrate
    from pai_core.pipeline import Pipeline
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from pai_core.testing import make_act_policy

    torch.manual_seed(0)
    policy = make_act_policy(root / "policy", cameras=CAMS, chunk_size=6, n_action_steps=3)
    plain = Pipeline.load(str(policy))
    tokens = torch.cat(
        [r.tokens for r in plain.engine.step_batch([observation(i / 40, seed=1000 + i) for i in range(40)])]
    ).float()
    sae = SparseAutoencoder(SAEConfig(d_in=tokens.shape[1], expansion_factor=2, k=8))
    with torch.no_grad():
        sae.b_pre.copy_(tokens.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(300):
        loss = (sae(tokens)[0] - tokens).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.unit_norm_decoder_()
    save_sae(sae, root / "sae")
    pipe = Pipeline.load(str(policy), str(root / "sae"))
    scores = [f.ood_score for f in pipe.step_batch([observation(i / 60 + 0.005, seed=2000 + i) for i in range(60)])]
    calibrate(np.array(scores), alpha=0.02).save(root / "sae" / "ood_params.json")
    return {"policy": str(policy), "sae": str(root / "sae"), "n_latents": sae.config.n_latents}


def write_params(path: Path, models: dict, **overrides) -> Path:
    """config/introspect.yaml with the test's models, topics and timings."""
    doc = yaml.safe_load((ROOT / "config" / "introspect.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    params.update(
        policy_path=models["policy"],
        sae_path=models["sae"],
        joint_states_topic=JOINTS_TOPIC,
        joint_names=JOINTS,
        rate_hz=10.0,
        stale_timeout_s=START_STALE_S,
        startup_grace_s=600.0,
        max_input_age_s=0.5,
        use_sim_time=True,
    )  # sim time, and nobody publishes /clock
    params["cameras"] = {"topics": [FRONT, WRIST], "features": list(CAMS)}
    params["safe_stop"] = {"service": SAFE_STOP_SERVICE}
    for key, value in overrides.items():
        params[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


def node_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Probe:
    """The robot side: publishes cameras and joints, serves the safe-stop service, records every output."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Bool, Float32, Float32MultiArray, String
        from std_srvs.srv import Trigger

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("pai_test_probe", context=self.context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {}
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        stream = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        outputs = {
            "overlay/front": Image,
            "overlay/wrist": Image,
            "overlay/front/compressed": CompressedImage,
            "overlay/wrist/compressed": CompressedImage,
            "features": Float32MultiArray,
            "ood_score": Float32,
            "ood_threshold": Float32,
            "action": Float32MultiArray,
            "action_chunk": Float32MultiArray,
            "attention_share": Float32MultiArray,
            "joint_command": JointState,
        }
        for name, cls in outputs.items():
            self.node.create_subscription(cls, f"{NS}/{name}", lambda m, n=name: self._record(n, m), stream)
        for name, cls in (("alarm", Bool), ("safe_stop", Bool), ("feature_names", String)):
            self.node.create_subscription(cls, f"{NS}/{name}", lambda m, n=name: self._record(n, m), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._record("diagnostics", m), 10)
        self.front = self.node.create_publisher(Image, FRONT, 10)
        self.wrist = self.node.create_publisher(CompressedImage, WRIST, 10)
        self.joints = self.node.create_publisher(JointState, JOINTS_TOPIC, 10)
        self.safe_stop_calls: list[float] = []
        self.node.create_service(Trigger, SAFE_STOP_SERVICE, self._safe_stop)
        self.reset_client = self.node.create_client(Trigger, f"{NS}/reset_alarm")
        self.param_client = self.node.create_client(SetParameters, f"{NS}/set_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _record(self, name: str, msg) -> None:
        with self.lock:
            self.got.setdefault(name, []).append((time.monotonic(), msg))

    def _safe_stop(self, request, response):
        self.safe_stop_calls.append(time.monotonic())
        response.success = True
        response.message = "robot stopped"
        return response

    def messages(self, name: str, since: float = 0.0) -> list:
        with self.lock:
            return [m for t, m in self.got.get(name, []) if t >= since]

    def clear(self, name: str) -> None:
        with self.lock:
            self.got.pop(name, None)

    def latest(self, name: str):
        msgs = self.messages(name)
        return msgs[-1] if msgs else None

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # ---------------------------------------------------------------------------------------- inputs
    def image_messages(self, obs, stamp: tuple[int, int], wrist_format: str = "jpeg"):
        import cv2
        from sensor_msgs.msg import CompressedImage, Image

        front = obs.images["observation.images.front"]
        img = Image(height=front.shape[0], width=front.shape[1], encoding="bgr8", step=front.shape[1] * 3)
        img.data = np.ascontiguousarray(front[..., ::-1]).tobytes()
        wrist = obs.images["observation.images.wrist"]
        ext = ".png" if wrist_format == "png" else ".jpg"
        comp = CompressedImage(format=wrist_format)
        comp.data = cv2.imencode(ext, cv2.cvtColor(wrist, cv2.COLOR_RGB2BGR))[1].tobytes()
        for m in (img, comp):
            m.header.stamp.sec, m.header.stamp.nanosec = stamp
        return img, comp

    def joint_message(self, state, stamp: tuple[int, int], names=None):
        from sensor_msgs.msg import JointState

        # reversed order plus an extra joint: the node maps by name
        names = names if names is not None else list(reversed(JOINTS)) + ["extra_joint"]
        values = dict(zip(JOINTS, state.tolist()))
        msg = JointState(name=names, position=[float(values.get(n, 0.5)) for n in names])
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        return msg

    def publish(self, obs, stamp: tuple[int, int], wrist_format: str = "jpeg") -> None:
        """Joints and the wrist camera first, the front camera (which wakes the engine) last."""
        img, comp = self.image_messages(obs, stamp, wrist_format)
        self.joints.publish(self.joint_message(obs.state, stamp))
        self.wrist.publish(comp)
        self.front.publish(img)

    def call(self, client, request, timeout: float = 10.0):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.02)
        assert future.done(), f"service {client.srv_name} did not answer within {timeout} s"
        return future.result()


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def diagnostic(probe: Probe, name: str):
    msg = probe.latest("diagnostics")
    if msg is None:
        return None
    for status in msg.status:
        if status.name == f"pai_introspector: {name}":
            return status, {kv.key: kv.value for kv in status.values}
    return None


class Clock:
    """Input stamps: a large realistic epoch plus nanoseconds, so exact stamp copying is checked."""

    def __init__(self):
        self.ns = 1_700_000_000_123_456_789

    def next(self, dt: float = 0.2) -> tuple[int, int]:
        self.ns += int(dt * 1e9) + 7
        return self.ns // 1_000_000_000, self.ns % 1_000_000_000


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("ros_models"))


@pytest.fixture(scope="module")
def probe():
    require_loopback_dds()
    p = Probe()
    yield p
    p.close()


@pytest.fixture(scope="module")
def node(models, probe, tmp_path_factory):
    params = write_params(tmp_path_factory.mktemp("ros_params") / "introspect.yaml", models)
    log = open(tmp_path_factory.mktemp("ros_log") / "node.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(params)],
        env=node_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )

    def log_text() -> str:
        log.flush()
        return Path(log.name).read_text()

    try:
        wait_for(lambda: proc.poll() is not None or probe.latest("feature_names"), 90, "the node to start")
        assert proc.poll() is None, f"node exited with {proc.returncode}:\n{log_text()}"
        wait_for(
            lambda: (
                probe.front.get_subscription_count()
                and probe.wrist.get_subscription_count()
                and probe.joints.get_subscription_count()
            ),
            20,
            "the node's subscriptions",
        )
        proc.log_text = log_text  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    assert proc.returncode == 0, (
        f"node did not shut down cleanly (exit {proc.returncode}):\n{Path(log.name).read_text()}"
    )


@pytest.fixture(scope="module")
def clock():
    return Clock()


def set_params(probe: Probe, **values) -> list:
    """Set node parameters through the standard ~/set_parameters service; returns the results."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    params = []
    for name, value in values.items():
        if isinstance(value, float):
            v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, int):
            v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        else:
            v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        params.append(Parameter(name=name, value=v))
    return probe.call(probe.param_client, SetParameters.Request(parameters=params)).results


def reset_alarm(probe: Probe):
    from std_srvs.srv import Trigger

    response = probe.call(probe.reset_client, Trigger.Request())
    wait_for(lambda: probe.latest("alarm").data is False, 5, "the alarm to clear")
    return response


def publish_and_wait(probe: Probe, obs, clock: Clock, wrist_format: str = "jpeg", dt: float = 0.2):
    """Publish one observation and wait for the features output carrying its stamp."""
    stamp = clock.next(dt)
    before = len(probe.messages("overlay/front"))
    probe.publish(obs, stamp, wrist_format)
    wait_for(
        lambda: any(stamp_of(m) == stamp for m in probe.messages("overlay/front")[before:]),
        10,
        f"the overlay of the frame stamped {stamp}",
    )
    return stamp


# ------------------------------------------------------------------------------------------------- tests
def test_a_node_started_before_its_inputs_raises_no_alarm_and_diagnostics_run_on_sim_time_without_clock(node, probe):
    """The node came up with stale_timeout_s=1 and no input at all: the start-up grace holds the watchdog."""
    from std_srvs.srv import Trigger

    probe.clear("diagnostics")
    time.sleep(START_STALE_S * 2.5)
    assert probe.latest("alarm").data is False and probe.latest("safe_stop").data is False
    assert probe.safe_stop_calls == []
    status, values = wait_for(lambda: diagnostic(probe, "start-up"), 5, "the start-up diagnostic")
    assert status.level == b"\x00" and "waiting for the first complete observation" in status.message
    assert values["startup_grace_s"] == "600" and FRONT in status.message
    # use_sim_time with no /clock: ROS time stands still at 0, /diagnostics still comes every second
    wait_for(lambda: len(probe.messages("diagnostics")) >= 2, 5, "diagnostics under sim time")
    assert probe.latest("diagnostics").header.stamp.sec == 0
    response = probe.call(probe.reset_client, Trigger.Request())
    assert response.success and response.message == "alarm reset (was: not active)"
    [ok] = set_params(probe, stale_timeout_s=PATIENT_STALE_S)
    assert ok.successful, ok.reason


def test_node_publishes_overlays_features_score_and_alarm_with_the_input_stamps(node, probe, models, clock):
    import cv2

    start = time.monotonic()
    stamps = []
    for i in range(10):
        stamps.append(clock.next())
        probe.publish(observation(i / 10, seed=3000 + i), stamps[-1])
        time.sleep(0.2)
    wait_for(lambda: len(probe.messages("overlay/front", start)) >= 8, 10, "overlays of the published frames")
    elapsed = time.monotonic() - start

    overlays = probe.messages("overlay/front", start)
    assert {stamp_of(m) for m in overlays} <= set(stamps), "overlay stamps must be the input header stamps"
    assert len(overlays) >= 8, f"{len(overlays)} of 10 frames at 5 Hz were processed (rate_hz 10)"
    assert len(overlays) / elapsed > 2.0
    for name in ("overlay/front", "overlay/wrist"):
        msg = probe.messages(name, start)[-1]
        assert (msg.height, msg.width, msg.encoding, msg.step) == (48, 64, "rgb8", 64 * 3)
        assert len(msg.data) == 48 * 64 * 3
    comp = probe.messages("overlay/wrist/compressed", start)[-1]
    assert comp.format == "jpeg"
    assert cv2.imdecode(np.frombuffer(bytes(comp.data), np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    assert stamp_of(comp) in stamps

    features = probe.messages("features", start)[-1]
    assert features.layout.dim[0].label == "features" and features.layout.dim[0].size == models["n_latents"]
    assert len(features.data) == models["n_latents"] and np.all(np.isfinite(features.data))
    names = json.loads(probe.latest("feature_names").data)
    assert len(names) == models["n_latents"]
    scores = [m.data for m in probe.messages("ood_score", start)]
    threshold = probe.latest("ood_threshold").data
    assert len(scores) == len(overlays) and all(np.isfinite(scores))
    calibrated = json.loads((Path(models["sae"]) / "ood_params.json").read_text())["threshold"]
    assert threshold == pytest.approx(calibrated, rel=1e-6)
    assert probe.latest("alarm").data is False
    chunk = probe.messages("action_chunk", start)[-1]
    assert [(d.label, d.size) for d in chunk.layout.dim] == [("time", 6), ("action", 6)]
    assert len(probe.messages("action", start)[-1].data) == 6
    share = probe.messages("attention_share", start)[-1]
    assert share.layout.dim[0].label == "latent,state,front,wrist" and sum(share.data) == pytest.approx(1.0, abs=1e-4)
    # the next action, named by joint (no units configured: the policy's units), with the input stamp
    command = probe.messages("joint_command", start)[-1]
    assert list(command.name) == JOINTS and stamp_of(command) in stamps
    np.testing.assert_allclose(command.position, probe.messages("action", start)[-1].data, rtol=1e-6)
    status, _ = wait_for(lambda: diagnostic(probe, "start-up"), 5, "the start-up diagnostic")
    assert status.message.startswith("first complete observation")


def test_a_recorded_episode_gives_the_same_features_and_scores_as_the_offline_pipeline(
    node, probe, models, clock, tmp_path
):
    from pai_core.pipeline import Pipeline
    from pai_core.ros_convert import image_msg_to_rgb
    from pai_core.sources.dataset import iter_episode
    from pai_core.testing import make_lerobot_dataset

    dataset = make_lerobot_dataset(tmp_path / "ds", cameras=CAMS, episodes=1, frames=6, seed=5)
    offline = Pipeline.load(models["policy"], models["sae"])
    for obs in iter_episode(dataset, 0):
        n_features, n_scores = len(probe.messages("features")), len(probe.messages("ood_score"))
        stamp = publish_and_wait(probe, obs, clock, wrist_format="png")
        # the offline engine sees exactly the images the messages carry
        img, comp = probe.image_messages(obs, stamp, "png")
        obs.images = {
            "observation.images.front": image_msg_to_rgb(img),
            "observation.images.wrist": image_msg_to_rgb(comp),
        }
        expected = offline.step(obs)
        wait_for(
            lambda n_features=n_features, n_scores=n_scores: (
                len(probe.messages("features")) > n_features and len(probe.messages("ood_score")) > n_scores
            ),
            5,
            "the frame's features and score",
        )
        # the first output after publishing is this frame's (never a mix with the previous frame's inputs)
        got_features = np.asarray(probe.messages("features")[n_features].data)
        got_score = probe.messages("ood_score")[n_scores].data
        np.testing.assert_allclose(got_features, expected.features, rtol=1e-5, atol=1e-6)
        assert got_score == pytest.approx(expected.ood_score, rel=1e-5)
    time.sleep(0.3)
    assert len(probe.messages("features")) == n_features + 1, "one output per recorded frame"


def test_malformed_messages_are_reported_in_diagnostics_and_do_not_stop_the_node(node, probe, clock):
    from sensor_msgs.msg import CompressedImage, Image

    stamp = clock.next()
    bad_encoding = Image(height=48, width=64, encoding="yuv_unknown", step=64 * 3)
    bad_encoding.data = bytes(48 * 64 * 3)
    short = Image(height=48, width=64, encoding="rgb8", step=64 * 3)
    short.data = bytes(100)
    garbage = CompressedImage(format="jpeg")
    garbage.data = b"not a jpeg"
    for msg in (bad_encoding, short, garbage):
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    probe.front.publish(bad_encoding)
    probe.front.publish(short)
    probe.wrist.publish(garbage)
    nan_state = np.full(6, np.nan, np.float32)
    probe.joints.publish(probe.joint_message(nan_state, stamp))
    probe.joints.publish(probe.joint_message(np.zeros(6, np.float32), stamp, names=JOINTS[:4]))
    # a clock jump back: stamps one minute in the past
    back = (stamp[0] - 60, stamp[1])
    probe.publish(observation(0.3, seed=11), back)
    time.sleep(0.3)
    assert node.poll() is None, f"the node died on malformed input:\n{node.log_text()}"

    publish_and_wait(probe, observation(0.4, seed=12), clock)  # still working afterwards
    probe.clear("diagnostics")

    def report():
        found = diagnostic(probe, "inputs")
        return found if found and all(t in found[1]["malformed"] for t in (FRONT, WRIST, JOINTS_TOPIC)) else None

    status, values = wait_for(report, 5, "the inputs diagnostic")
    assert status.level == b"\x01"  # WARN
    malformed = yaml.safe_load(values["malformed"])
    assert malformed == {FRONT: 2, WRIST: 1, JOINTS_TOPIC: 2}
    assert (
        "not finite" in values[f"last error {JOINTS_TOPIC}"] or "missing joints" in values[f"last error {JOINTS_TOPIC}"]
    )
    assert FRONT in values["clock jumps back"]
    log = node.log_text()
    assert "yuv_unknown" in log and "needs 9216 bytes" in log and "missing joints" in log and "not finite" in log


def test_out_of_distribution_input_calls_the_safe_stop_service_and_stops_actions(node, probe, clock):
    publish_and_wait(probe, observation(0.1, seed=3999), clock)
    assert probe.latest("alarm").data is False, node.log_text()
    reset_alarm(probe)  # empties the alarm window
    calls_before = len(probe.safe_stop_calls)
    start = time.monotonic()
    for i in range(6):
        publish_and_wait(probe, observation(i / 6, "noise", seed=4000 + i), clock)
        if probe.latest("alarm").data:
            break
    wait_for(lambda: probe.latest("alarm").data is True, 5, "the alarm")
    wait_for(lambda: len(probe.safe_stop_calls) > calls_before, 5, "the safe-stop service call")
    assert probe.latest("safe_stop").data is True
    threshold = probe.latest("ood_threshold").data
    above = [m.data for m in probe.messages("ood_score", start) if m.data > threshold]
    assert len(above) >= 3, (
        f"alarm n=3 of m=5 needs three frames above threshold {threshold}, scores "
        f"{[m.data for m in probe.messages('ood_score')]}\n{node.log_text()}"
    )

    actions = len(probe.messages("action"))
    for i in range(3):  # alarm holds (latched) even for clean frames: no actions
        publish_and_wait(probe, observation(i / 3, seed=5000 + i), clock)
    time.sleep(0.3)
    assert len(probe.messages("action")) == actions, "actions were published while the alarm held"
    assert len(probe.safe_stop_calls) == calls_before + 1, "the safe stop is called once per rising alarm"
    wait_for(
        lambda: diagnostic(probe, "alarm") and "OOD score above" in diagnostic(probe, "alarm")[0].message,
        3,
        "the alarm reason in diagnostics",
    )


def test_reset_alarm_clears_the_alarm_and_actions_resume(node, probe, clock):
    assert probe.latest("alarm").data is True
    response = reset_alarm(probe)
    assert response.success and "OOD score above" in response.message
    wait_for(lambda: probe.latest("safe_stop").data is False, 5, "the stop request to clear")
    actions = len(probe.messages("action"))
    for i in range(3):
        publish_and_wait(probe, observation(i / 3, seed=6000 + i), clock)
    wait_for(lambda: len(probe.messages("action")) >= actions + 3, 5, "actions after the reset")
    assert probe.latest("alarm").data is False


def test_threshold_and_alarm_policy_change_at_run_time_and_bad_values_are_rejected(node, probe, clock, models):
    [ok] = set_params(probe, threshold=123.0)
    assert ok.successful, ok.reason
    publish_and_wait(probe, observation(0.5, seed=7000), clock)
    wait_for(lambda: probe.latest("ood_threshold").data == pytest.approx(123.0), 3, "the new threshold")

    [bad] = set_params(probe, **{"alarm.n": 9})
    assert not bad.successful and "n=9" in bad.reason
    [fixed] = set_params(probe, policy_path="/elsewhere")
    assert not fixed.successful and "read-only" in fixed.reason
    [colormap] = set_params(probe, **{"overlay.colormap": "nope"})
    assert not colormap.successful and "colormap" in colormap.reason

    [ok] = set_params(probe, threshold=0.0)
    assert ok.successful
    publish_and_wait(probe, observation(0.6, seed=7001), clock)
    calibrated = json.loads((Path(models["sae"]) / "ood_params.json").read_text())["threshold"]
    wait_for(
        lambda: probe.latest("ood_threshold").data == pytest.approx(calibrated, rel=1e-6),
        3,
        "the calibrated threshold again",
    )


def test_stale_inputs_raise_the_alarm_through_the_watchdog(node, probe, clock):
    [ok] = set_params(probe, stale_timeout_s=STALE_S)
    assert ok.successful, ok.reason
    publish_and_wait(probe, observation(0.2, seed=8000), clock)
    assert probe.latest("alarm").data is False
    calls_before = len(probe.safe_stop_calls)
    silent_from = time.monotonic()
    wait_for(lambda: probe.latest("alarm").data is True, STALE_S + 5, "the stale-input alarm")
    assert time.monotonic() - silent_from >= STALE_S * 0.9
    wait_for(lambda: len(probe.safe_stop_calls) > calls_before, 5, "the safe-stop call on stale inputs")
    probe.clear("diagnostics")
    wait_for(
        lambda: diagnostic(probe, "alarm") and "stale inputs" in diagnostic(probe, "alarm")[0].message,
        3,
        "the stale reason in diagnostics",
    )


def test_a_reset_while_inputs_are_still_stale_says_it_cannot_hold_and_one_after_they_return_does(node, probe, clock):
    from std_srvs.srv import Trigger

    assert probe.latest("alarm").data is True
    response = probe.call(probe.reset_client, Trigger.Request())
    assert not response.success
    assert response.message.startswith("alarm not reset: stale inputs: no complete observation for")
    assert "restore the inputs first" in response.message
    time.sleep(0.5)
    assert probe.latest("alarm").data is True, "the refused reset must not flicker the alarm"
    publish_and_wait(probe, observation(0.3, seed=8100), clock)
    response = reset_alarm(probe)
    assert response.success and response.message.startswith("alarm reset (was: stale inputs")
    [ok] = set_params(probe, stale_timeout_s=PATIENT_STALE_S)
    assert ok.successful


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"joint_names": ["a", "b"]}, "joint_names has 2 names ['a', 'b'] but the policy's observation.state has 6"),
        ({"stale_timout_s": 5.0}, "parameters file: Unknown settings ['stale_timout_s']; known settings are ["),
        ({"stale_timeout_s": -1.0}, "stale_timeout_s=-1.0 must be positive"),
        (
            {"sae_path": "no/such/sae"},
            "sae_path='no/such/sae': no such directory (relative paths are relative to the working directory",
        ),
        ({"device": "cuda:64"}, "device='cuda:64' but torch sees"),
        ({"model_dtype": "float8"}, "model_dtype='float8' is not one of ['float32', 'bfloat16', 'float16']"),
        (  # the parameter reaches the policy's config before the policy is built
            {"policy_overrides": ["tempral_ensemble_coeff=0.01"]},
            "tempral_ensemble_coeff: ACTConfig has no field 'tempral_ensemble_coeff'",
        ),
        (
            {"safe_stop": {"backend": "ros2_control", "controllers": ["arm_controller"]}},
            "safe_stop.backend=ros2_control needs the controller_manager_msgs/srv/SwitchController service type",
        ),
    ],
)
def test_invalid_parameters_end_the_node_with_one_clear_line_and_exit_code_2(models, tmp_path, overrides, message):
    require_loopback_dds()
    params = write_params(tmp_path / "bad.yaml", models, **overrides)
    proc = subprocess.run(
        [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(params)],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_parameters_file_is_an_error_not_a_warning(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(tmp_path / "nope.yaml")],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"[pai_introspector] error: --params-file {tmp_path / 'nope.yaml'}: no such file"
