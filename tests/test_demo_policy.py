"""The shipped demo policy: a real LeRobot ACT for the simulation, with its training record, and the
demo's default."""

from __future__ import annotations

import json

import pytest

from pai_core.errors import PaiError
from pai_core.sim.demo import SHIPPED_POLICY, SHIPPED_RECIPE, DemoConfig, build_stages, run_demo


def test_the_shipped_policy_is_a_lerobot_act_for_the_simulations_camera_joints_and_actions():
    from pai_core.engine import Introspector
    from pai_core.sim.env import CAMERA, JOINT_NAMES, SimConfig

    engine = Introspector.from_pretrained(str(SHIPPED_POLICY / "pretrained_model"))
    sim = SimConfig()
    assert engine.camera_names == [CAMERA] and engine.image_shapes[CAMERA] == (sim.height, sim.width)
    assert engine.state_dim == len(JOINT_NAMES) and engine.action_dim == 4
    size = (SHIPPED_POLICY / "pretrained_model" / "model.safetensors").stat().st_size
    assert size < 60e6, f"the shipped policy must stay small, is {size / 1e6:.0f} MB"


def test_the_shipped_policy_records_how_it_was_made_and_what_it_measured():
    training = json.loads((SHIPPED_POLICY / "training.json").read_text())
    evaluation = json.loads((SHIPPED_POLICY / "evaluation.json").read_text())
    demo = DemoConfig.preset("x")
    assert training["episodes"] == demo.train_episodes
    # `pai demo --train-policy` trains what was shipped
    assert (training["steps"], training["config"]["batch_size"]) == (demo.train_steps, demo.batch_size)
    assert {k: training["config"][k] for k in SHIPPED_RECIPE} == SHIPPED_RECIPE
    assert evaluation["episodes"] >= 20 and 0 <= evaluation["successes"] <= evaluation["episodes"]
    readme = (SHIPPED_POLICY / "README.md").read_text()
    assert "pai sim record" in readme and "pai sim train-policy" in readme  # the exact commands
    assert (SHIPPED_POLICY / "training_loss.png").is_file()


def test_the_demo_uses_the_shipped_policy_by_default_and_trains_one_on_request(tmp_path):
    from pai_core.engine import Introspector

    cfg = DemoConfig.preset(tmp_path / "demo")
    assert cfg.policy == "shipped" and DemoConfig.preset(tmp_path, quick=True).policy == "train"
    run_demo(cfg, only=["train_policy"])
    stages = json.loads((cfg.output_dir / "stages.json").read_text())
    assert [s["status"] for s in stages] == ["done"]
    copied = Introspector.from_pretrained(str(cfg.output_dir / "policy" / "pretrained_model"))
    shipped = Introspector.from_pretrained(str(SHIPPED_POLICY / "pretrained_model"))
    assert copied.fingerprint == shipped.fingerprint
    assert (cfg.output_dir / "policy" / "training.json").is_file()


def test_the_demo_calibrates_the_alarm_on_the_policys_own_rollouts_recorded_once_the_policy_exists(tmp_path):
    stages = build_stages(DemoConfig.preset(tmp_path))
    names = [s.name for s in stages]
    assert names.index("evaluate_policy") < names.index("record_calibration") < names.index("calibrate_ood")
    assert stages[names.index("record_calibration")].outputs[0].parent == tmp_path / "datasets" / "calibration_rollouts"
    expert = build_stages(DemoConfig(tmp_path, calibration="expert"))
    assert [s.outputs[0].parent.name for s in expert if s.name == "record_calibration"] == ["calibration"]
    with pytest.raises(PaiError, match="calibration='policy'"):
        DemoConfig(tmp_path, calibration="policy")  # type: ignore[arg-type]
