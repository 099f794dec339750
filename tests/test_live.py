"""The live runner without ROS (pai_core.live): a real small ACT policy, inputs fed as the node's callbacks feed
them, a manual clock for the watchdog, the start-up grace, the alarm edges and the safe stop."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from pai_core.live import LiveRunner, check_device, check_paths
from pai_core.safe_stop import TopicOnly
from pai_core.settings import CameraSettings, PaiSettings, SafeStopSettings, SettingsError, UnitsSettings

CAMS = {"observation.images.front": (48, 64), "observation.images.wrist": (32, 32)}
TOPICS = {"/cam/front": "observation.images.front", "/cam/wrist/compressed": "observation.images.wrist"}
JOINTS = "/joint_states"
EPOCH_NS = 1_700_000_000_123_456_789


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


class RecordingStop:
    """A StopBackend that answers stopped at once and counts the requests."""

    target = "recording /stop"

    def __init__(self) -> None:
        self.calls = 0

    def ready(self) -> bool:
        return True

    def call(self, done):
        self.calls += 1
        done(True, "stopped")

    def cancel(self, handle) -> None:
        pass


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from pai_core.testing import make_act_policy

    return make_act_policy(tmp_path_factory.mktemp("live") / "policy", cameras=CAMS, chunk_size=4, n_action_steps=2)


def settings(policy, **kw) -> PaiSettings:
    base = dict(
        policy_path=str(policy),
        cameras=CameraSettings(list(TOPICS), list(TOPICS.values())),
        stale_timeout_s=1.0,
        startup_grace_s=10.0,
        rate_hz=10.0,
    )
    base.update(kw)
    return PaiSettings(**base)


def runner(policy, sae=None, backend=None, **kw):
    from pai_core.pipeline import Pipeline

    clock, logs = Clock(), []
    s = settings(policy, **kw)
    pipe = Pipeline.load(str(policy), str(sae) if sae else "")
    r = LiveRunner(pipe, s, backend or RecordingStop(), clock=clock, log=lambda level, text: logs.append((level, text)))
    return r, clock, logs


def image(feature: str, value: int = 100) -> np.ndarray:
    h, w = CAMS[feature]
    return np.full((h, w, 3), value, np.uint8)


def feed(r: LiveRunner, ns: int, state=None, cameras=TOPICS) -> None:
    """One message on every input (joints first), stamps ``ns`` + small offsets as real inputs have."""
    r.add_joints(JOINTS, ns - 5_000_001, np.zeros(6) if state is None else np.asarray(state, float))
    for i, (topic, feature) in enumerate(cameras.items()):
        r.add_image(topic, feature, ns + i, image(feature, 60 + i))


def status(r: LiveRunner, name: str):
    return next(s for s in r.diagnostics() if s.name == f"pai_introspector: {name}")


def test_the_engine_runs_only_when_every_input_is_new_and_outputs_carry_the_exact_nanosecond_stamp(policy):
    r, clock, _ = runner(policy)
    r.add_image("/cam/front", "observation.images.front", EPOCH_NS, image("observation.images.front"))
    assert r.tick().frame is None  # the wrist camera and the joints never arrived
    feed(r, EPOCH_NS + 100_000_000)
    tick = r.tick()
    assert tick.frame is not None
    assert tick.stamp_ns == EPOCH_NS + 100_000_001  # the newest input (the wrist camera), to the nanosecond
    assert tick.actions and tick.command is not None and tick.command.names[0] == "shoulder_pan"
    # a new front frame alone must not be combined with the old wrist frame
    r.add_image("/cam/front", "observation.images.front", EPOCH_NS + 200_000_000, image("observation.images.front"))
    r.add_joints(JOINTS, EPOCH_NS + 200_000_000, np.zeros(6))
    assert r.tick().frame is None
    r.add_image(
        "/cam/wrist/compressed", "observation.images.wrist", EPOCH_NS + 210_000_000, image("observation.images.wrist")
    )
    assert r.tick().stamp_ns == EPOCH_NS + 210_000_000
    assert r.frames == 2 and r.assembler.stats.superseded == {"observation.images.front": 1}  # the lone first frame


def test_no_stale_alarm_before_the_first_complete_observation_until_the_start_up_grace_ends(policy):
    r, clock, logs = runner(policy, startup_grace_s=5.0)
    clock.t += 4.0  # far past stale_timeout_s=1, inside the grace: cameras are still starting
    tick = r.tick()
    assert tick.alarm is None and not r.pipeline.alarm.state.active
    st = status(r, "start-up")
    assert st.level == "ok" and "waiting for the first complete observation (4.0 of 5 s start-up grace" in st.message
    assert "never received ['/cam/front', '/cam/wrist/compressed', '/joint_states']" in st.message
    assert r.request_reset()[0], "a reset during the grace holds"
    assert r.tick().alarm is False, "a reset publishes the (cleared) alarm state again"
    clock.t += 1.5
    tick = r.tick()
    assert tick.alarm is True
    assert "no complete observation since start: 5.5 s, longer than startup_grace_s=5" in r.pipeline.alarm.state.reason
    assert r.safe_stop.backend.calls == 1
    assert status(r, "start-up").level == "error"
    assert ("error", "ALARM: " + r.pipeline.alarm.state.reason) in logs


def test_a_started_node_that_loses_its_inputs_raises_the_alarm_stops_the_robot_and_refuses_a_reset_that_cannot_hold(
    policy,
):
    r, clock, _ = runner(policy)
    clock.t += 3.0  # a slow start inside the grace
    feed(r, EPOCH_NS)
    assert r.tick().frame is not None
    assert status(r, "start-up").message == "first complete observation 3.0 s after start"
    clock.t += 1.2
    tick = r.tick()
    assert tick.alarm is True and "stale inputs: no complete observation for 1.2 s" in r.pipeline.alarm.state.reason
    assert r.tick().alarm is None, "the edge is published once"
    assert r.safe_stop.backend.calls == 1 and r.safe_stop.state == "stopped"
    ok, answer = r.request_reset()
    assert not ok
    assert answer.startswith("alarm not reset: stale inputs: no complete observation for 1.2 s")
    assert "restore the inputs first" in answer
    assert r.tick().alarm is None and r.pipeline.alarm.state.active
    feed(r, EPOCH_NS + 1_300_000_000)  # inputs back: a frame, no actions while the alarm holds
    tick = r.tick()
    assert tick.frame is not None and not tick.actions and tick.command is None
    assert tick.frame.alarm.active, "the frame carries the node's alarm, faults included"
    ok, answer = r.request_reset()
    assert ok and answer.startswith("alarm reset (was: stale inputs")
    tick = r.tick()
    assert tick.alarm is False and not r.pipeline.alarm.state.active and r.safe_stop.state == "idle"
    feed(r, EPOCH_NS + 1_400_000_000)
    assert r.tick().actions


def test_an_engine_failure_is_a_fault_and_the_reset_answer_warns_it_may_return(policy):
    r, clock, logs = runner(policy)
    r.add_joints(JOINTS, EPOCH_NS, np.zeros(6))
    r.add_image("/cam/front", "observation.images.front", EPOCH_NS, np.zeros((48, 64, 4), np.uint8))  # RGBA
    r.add_image("/cam/wrist/compressed", "observation.images.wrist", EPOCH_NS, image("observation.images.wrist"))
    tick = r.tick()
    assert tick.frame is None and tick.alarm is True
    assert r.engine_errors == 1 and r.pipeline.alarm.state.reason.startswith("engine failure: ")
    assert status(r, "engine").level == "error"
    ok, answer = r.request_reset()
    assert ok and "the engine failed on the last frame" in answer


def test_ood_alarm_edges_stop_actions_and_ask_for_the_stop_once(policy, tmp_path):
    from tests.replay_helpers import make_sae

    sae = make_sae(tmp_path / "sae", d_in=64, threshold=1e-12)  # every frame is above threshold
    r, clock, _ = runner(policy, sae=sae)
    edges = []
    for i in range(5):
        clock.t += 0.1
        feed(r, EPOCH_NS + i * 100_000_000)
        tick = r.tick()
        edges.append(tick.alarm)
        assert tick.frame.ood_score is not None
    assert edges == [None, None, True, None, None]  # n=3 of m=5
    assert r.safe_stop.backend.calls == 1
    alarm = status(r, "alarm")
    assert alarm.level == "error" and "OOD score above" in alarm.message
    assert alarm.values["ood_score"] and status(r, "safe stop").values["safe_stop_state"] == "stopped"


def test_joint_states_enter_in_the_policys_units_and_actions_leave_in_the_robots(policy):
    units = UnitsSettings(conversions=["degrees"] * 5 + ["linear"], scale=[1.0] * 5 + [100 / 1.75], offset=[0.0] * 6)
    r, clock, _ = runner(policy, units=units)
    radians = np.array([0.1, -0.6, 0.7, 1.1, -0.05, 0.875])
    feed(r, EPOCH_NS, radians)
    tick = r.tick()
    expected = np.concatenate([np.degrees(radians[:5]), [50.0]]).astype(np.float32)
    np.testing.assert_allclose(tick.frame.observation.state, expected, rtol=1e-6)
    action = np.asarray(tick.frame.result.action, np.float64)
    robot = tick.command.positions
    np.testing.assert_allclose(robot[:5], np.radians(action[:5]), rtol=1e-6)
    assert robot[5] == pytest.approx(action[5] * 1.75 / 100, rel=1e-6)
    assert status(r, "joint units").values["units gripper"] == "linear: policy = 57.1429 * robot + 0"


def test_the_live_check_names_joints_that_look_like_the_wrong_units(tmp_path):
    from pai_core.testing import make_act_policy

    mean, std = np.array([2.0, -35.0, 42.0, 65.0, -3.0, 22.0]), np.array([22.0, 24.0, 21.0, 14.0, 28.0, 13.0])
    stats = {k: {"mean": np.array([0.5, 0.5, 0.5]).reshape(3, 1, 1), "std": np.full((3, 1, 1), 0.25)} for k in CAMS}
    stats["observation.state"] = stats["action"] = {"mean": mean, "std": std}
    degrees_policy = make_act_policy(tmp_path / "deg", cameras=CAMS, chunk_size=4, n_action_steps=2, stats=stats)
    r, clock, logs = runner(degrees_policy)  # units not configured: radians go in as they are
    assert "not checked yet (0 of 10 states)" in status(r, "joint units").message
    for i in range(12):
        clock.t += 0.1
        deg = mean + 1.2 * std * np.sin(i / 2 + np.arange(6))
        feed(r, EPOCH_NS + i * 100_000_000, np.radians(deg))
        r.tick()
    st = status(r, "joint units")
    assert st.level == "warn" and st.message.startswith("joints that look like the wrong units: shoulder_pan")
    assert "radians where the policy expects degrees" in st.values["check elbow_flex"]
    warned = [text for level, text in logs if level == "warn" and "wrong units" in text]
    assert len(warned) == 1 and "gripper" in warned[0]


def test_the_run_loop_keeps_the_rate_and_survives_a_publisher_that_throws(policy):
    from pai_core.pipeline import Pipeline

    s = settings(policy, rate_hz=4.0, stale_timeout_s=30.0)
    r = LiveRunner(Pipeline.load(str(policy)), s, TopicOnly())
    stop, published, broken = threading.Event(), [], [True]

    def publish(tick):
        if tick.frame is not None and broken[0]:
            broken[0] = False
            raise RuntimeError("publisher gone")
        published.append(tick)

    worker = threading.Thread(target=r.run, args=(stop, publish))
    worker.start()
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 2.0:  # inputs at 20 Hz, engine limited to 4 Hz
        feed(r, EPOCH_NS + i * 50_000_000)
        i += 1
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=10)
    frames = [t for t in published if t.frame is not None]
    assert 4 <= r.frames <= 10, r.frames
    assert r.engine_errors == 1 and "publisher gone" in r.last_engine_error
    assert any(t.alarm is True for t in published), "the failure's alarm edge is published on the next tick"
    assert sum(r.assembler.stats.superseded.values()) > 0 and len(frames) == r.frames - 1


def test_start_checks_name_a_missing_gpu_a_missing_folder_and_mismatched_joints(policy, tmp_path, monkeypatch):
    with pytest.raises(SettingsError, match=r"device='cuda' but torch sees no CUDA GPU"):
        check_device("cuda", cuda_devices=0)
    with pytest.raises(SettingsError, match=r"device='cuda:2' but torch sees 2 CUDA GPU\(s\): cuda:0 .. cuda:1"):
        check_device("cuda:2", cuda_devices=2)
    check_device("cuda:1", cuda_devices=2)
    check_device("cpu")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SettingsError,
        match=r"sae_path='outputs/demo/sae': no such directory \(relative paths are "
        r"relative to the working directory, .*\); a hub id has the form",
    ):
        check_paths(settings(policy, sae_path="outputs/demo/sae"))
    with pytest.raises(SettingsError, match=r"ood_params_path='x/ood.json': no such file"):
        check_paths(settings(policy, ood_params_path="x/ood.json"))
    with pytest.raises(SettingsError, match="policy_path is empty"):
        check_paths(settings(policy, policy_path=""))
    check_paths(settings(policy, sae_path="user/sae"))  # a hub id is left to the hub
    with pytest.raises(
        SettingsError,
        match=r"joint_names has 2 names \['a', 'b'\] but the policy's observation.state "
        r"has 6 values",
    ):
        runner(policy, joint_names=["a", "b"])
    with pytest.raises(
        SettingsError,
        match=r"cameras.features \['observation.images.front'\] must name each policy "
        r"camera once",
    ):
        runner(policy, cameras=CameraSettings(["/f"], ["observation.images.front"]))


def test_a_topic_only_safe_stop_and_diagnostics_name_every_part(policy):
    r, clock, _ = runner(policy, backend=TopicOnly(), safe_stop=SafeStopSettings(service=""))
    names = [s.name for s in r.diagnostics()]
    assert names == [
        f"pai_introspector: {n}" for n in ("inputs", "engine", "start-up", "alarm", "safe stop", "joint units")
    ]
    assert status(r, "safe stop").message == "idle"
    r.input_error("/cam/front", ValueError("Image encoding 'yuv' is not supported"))
    r.add_image("/cam/front", "observation.images.front", EPOCH_NS, image("observation.images.front"))
    r.add_image("/cam/front", "observation.images.front", EPOCH_NS - 10**9, image("observation.images.front"))
    inputs = status(r, "inputs")
    assert inputs.level == "warn" and inputs.values["malformed"] == "{'/cam/front': 1}"
    assert inputs.values["clock jumps back"] == "{'/cam/front': 1}"
    assert not math.isnan(float(status(r, "engine").values["rate_hz"]))


def test_a_reset_starts_monitoring_over_lerobots_action_queue_and_the_scorers_history_included(policy):
    """What the demo's ROS replay found: the node's reset cleared only the alarm, so action consistency compared
    the first frames after it with chunks from before (bag_replay's warm-up frames) and the clean bag alarmed."""
    r, _, _ = runner(policy)
    feed(r, EPOCH_NS)
    assert r.tick().frame is not None
    queue = r.pipeline.engine.policy._action_queue
    assert len(queue) == 1  # n_action_steps 2: one action of the chunk still queued
    assert r.request_reset()[0]
    r.tick()  # the reset is applied on the runner's thread, at its next tick
    assert len(r.pipeline.engine.policy._action_queue) == 0
