"""The SO-101 simulation: scripted expert, LeRobot dataset and rosbag2 writers, perturbations, ACT training
and closed-loop evaluation, and the demo's stage caching. Small images keep it fast on two cores."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from pai_core.errors import InputError  # noqa: E402
from pai_core.sim.env import CAMERA, JOINT_NAMES, PickCubeSim, SimConfig  # noqa: E402
from pai_core.sim.scene import PERTURBATIONS  # noqa: E402

SMALL = dict(height=48, width=64)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from pai_core.sim.record import RecordConfig, record

    root = tmp_path_factory.mktemp("sim")
    summary = record(
        RecordConfig(root / "ds", episodes=2, seed=3, bag_path=root / "bag", sim=SimConfig(**SMALL)), progress=False
    )
    return root, summary


def test_the_expert_picks_up_the_cube_in_most_seeds():
    from pai_core.sim.record import run_expert

    with PickCubeSim(SimConfig(height=32, width=32)) as sim:
        episodes = [run_expert(sim, seed, hold_steps=0) for seed in (11, 12, 13)]
    assert sum(e.success for e in episodes) >= 2
    lifted = [e for e in episodes if e.success]
    assert all(len(e.steps) < sim.config.max_steps for e in lifted)


def test_hold_keeps_the_last_joint_targets_where_a_zero_action_re_targets_the_sagging_arm():
    """A lost frame means no new command: the controller keeps its targets (frame_skip in bench/failure.py)."""
    up = np.array([0.0, 0.0, 0.5, 1.0])
    with PickCubeSim(SimConfig(height=32, width=32)) as sim:
        after = {}
        for mode in ("hold", "zero"):
            sim.reset(11)
            for _ in range(3):
                sim.step(up)
            z, ctrl = sim.grasp_point[2], sim.env.data.ctrl.copy()
            for _ in range(5):
                obs, _ = sim.hold() if mode == "hold" else sim.step(np.array([0.0, 0.0, 0.0, 1.0]))
            after[mode] = (sim.grasp_point[2] - z, np.abs(sim.env.data.ctrl - ctrl).max(), sim.steps, obs.timestamp)
    assert after["hold"][1] == 0.0 and after["hold"][0] > 0.0  # same targets: the arm still converges upward
    assert after["zero"][1] > 0.1 and after["zero"][0] < -0.01  # re-targeted where it stood, then sagged
    assert after["hold"][2:] == after["zero"][2:] == (8, pytest.approx(8 / sim.config.fps))


def test_dart_noise_moves_the_robot_off_the_expert_path_but_the_recorded_action_stays_the_experts():
    from pai_core.errors import ConfigError
    from pai_core.sim.record import RecordConfig, run_expert

    with PickCubeSim(SimConfig(height=32, width=32)) as sim:
        clean = run_expert(sim, 11, hold_steps=0)
        noisy = run_expert(sim, 11, hold_steps=0, action_noise=0.6)
        again = run_expert(sim, 11, hold_steps=0, action_noise=0.6)
    assert all(np.array_equal(s.executed, s.action) for s in clean.steps)
    assert [s.state.tolist() for s in noisy.steps] == [s.state.tolist() for s in again.steps]  # seeded
    n = min(len(clean.steps), len(noisy.steps))
    assert not np.allclose([s.state for s in clean.steps[:n]], [s.state for s in noisy.steps[:n]], atol=1e-3)
    approach = [s for s in noisy.steps if s.action[3] == 1.0]  # jaws open: hover and descend
    noise = np.stack([s.executed[:3] - s.action[:3] for s in approach])
    assert (np.abs(noise) > 0).all() and 0 < noise.std() <= 0.6
    recorded = np.stack([s.action for s in noisy.steps])
    assert np.abs(recorded[:, :3]).max() <= 1.0 and set(recorded[:, 3].tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="action_noise=-0.1"):
        RecordConfig("unused", action_noise=-0.1)


def test_a_policy_recording_holds_the_frames_the_policy_saw_and_the_actions_it_chose(tmp_path):
    """``pai sim record --policy-path``: the policy drives; replaying its dataset through a fresh engine gives
    back every recorded action (what calibrating the alarm on a policy's rollouts relies on)."""
    from pai_core.engine import IntrospectionConfig, Introspector
    from pai_core.errors import ConfigError
    from pai_core.sim.demo import SHIPPED_POLICY
    from pai_core.sim.record import RecordConfig, record, run_expert
    from pai_core.sources.dataset import episode_bounds, iter_episode, open_dataset

    policy = str(SHIPPED_POLICY / "pretrained_model")
    sim = SimConfig(max_steps=12)
    summary = record(
        RecordConfig(tmp_path / "ds", episodes=2, seed=10_000, keep_failed=True, policy_path=policy, sim=sim),
        progress=False,
    )
    assert summary["actor"] == policy and [e["frames"] for e in summary["episodes"]] == [12, 12]
    dataset = open_dataset("pai/so101_pick_cube", tmp_path / "ds")
    engine = Introspector.from_pretrained(policy, IntrospectionConfig(rollout=False, keep_tokens=False))
    recorded = {}
    for episode in range(2):
        engine.reset()
        replayed = np.stack([np.asarray(engine.step(obs).action) for obs in iter_episode(dataset, episode)])
        lo, hi = episode_bounds(dataset, episode)
        recorded[episode] = np.stack([dataset.hf_dataset[i]["action"].numpy() for i in range(lo, hi)])
        np.testing.assert_allclose(replayed, recorded[episode], atol=1e-5)
    with PickCubeSim(sim) as env:  # the policy's actions, not the expert's
        expert = np.stack([s.action for s in run_expert(env, 10_000, hold_steps=0).steps])
    assert not np.allclose(expert[:12], recorded[0][: len(expert)], atol=1e-3)
    with pytest.raises(ConfigError, match="noise injection is for the expert"):
        RecordConfig("unused", policy_path=policy, action_noise=0.2)


def test_the_recorded_dataset_loads_with_lerobot_and_matches_its_summary(recording):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, summary = recording
    ds = LeRobotDataset("pai/so101_pick_cube", root=root / "ds")
    assert ds.meta.total_episodes == len(summary["episodes"]) == 2
    assert len(ds) == summary["frames"] == sum(e["frames"] for e in summary["episodes"])
    item = ds[0]
    assert tuple(item[CAMERA].shape) == (3, 48, 64)
    assert tuple(item["observation.state"].shape) == (len(JOINT_NAMES),)
    assert tuple(item["action"].shape) == (4,)
    assert ds.meta.features["observation.state"]["names"] == JOINT_NAMES
    assert json.loads((root / "ds" / "pai_sim.json").read_text())["perturbation"] == "none"


def test_the_bag_holds_one_image_and_one_joint_state_per_frame_of_the_first_episode(recording):
    from rosbags.highlevel import AnyReader

    root, summary = recording
    with AnyReader([root / "bag"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        first_episode = summary["episodes"][0]["frames"]
        assert counts == {"/camera/front/image_raw": first_episode, "/joint_states": first_episode}
        msgs = {}
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, reader.deserialize(raw, conn.msgtype))
    image, joints = msgs["/camera/front/image_raw"], msgs["/joint_states"]
    assert (image.height, image.width, image.encoding) == (48, 64, "rgb8")
    assert len(image.data) == 48 * 64 * 3
    assert list(joints.name) == JOINT_NAMES and len(joints.position) == 6


def test_every_perturbation_changes_what_the_camera_sees():
    images = {}
    for name in PERTURBATIONS:
        with PickCubeSim(SimConfig(perturbation=name, **SMALL)) as sim:
            images[name] = sim.reset(5).images[CAMERA].astype(np.int16)
    for name, img in images.items():
        if name != "none":
            assert np.abs(img - images["none"]).mean() > 0.2, name


def test_an_unknown_perturbation_is_rejected_naming_the_allowed_ones():
    with pytest.raises(InputError, match="occlusion"):
        SimConfig(perturbation="fog")


def test_a_policy_trained_on_the_recording_drives_the_simulator_in_closed_loop(recording, tmp_path):
    from pai_core.engine import Introspector
    from pai_core.sim.evaluate import EvalConfig, evaluate_policy
    from pai_core.sim.train import TrainConfig, train_policy

    root, _ = recording
    summary = train_policy(
        TrainConfig(
            root / "ds",
            tmp_path / "policy",
            steps=3,
            batch_size=4,
            dim_model=64,
            dim_feedforward=128,
            chunk_size=8,
            n_action_steps=4,
        ),
        progress=False,
    )
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "policy" / "training_loss.png").is_file()
    engine = Introspector.from_pretrained(summary["policy_path"])
    assert engine.image_shapes == {CAMERA: (48, 64)} and engine.action_dim == 4
    result = evaluate_policy(
        EvalConfig(
            summary["policy_path"], episodes=1, output_dir=str(tmp_path / "eval"), sim=SimConfig(max_steps=6, **SMALL)
        ),
        progress=False,
    )
    assert result["episodes"] == 1 and result["results"][0]["steps"] <= 6
    assert 0.0 <= result["success_rate"] <= 1.0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["episodes"] == 1
    assert (tmp_path / "eval" / "rollouts.mp4").stat().st_size > 0


def test_the_trained_policy_normalises_images_with_their_measured_pixel_statistics(recording, tmp_path):
    """LeRobot 0.4.4's dataset statistics give the images a std of about 0 (computed on uint8); the policy's
    preprocessor must hold the real per-channel mean and std of the frames it was trained on."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from safetensors.torch import load_file

    from pai_core.sim.train import TrainConfig, train_policy

    root, _ = recording
    summary = train_policy(
        TrainConfig(root / "ds", tmp_path / "policy", steps=1, batch_size=4, dim_model=32, dim_feedforward=64),
        progress=False,
    )
    ds = LeRobotDataset("pai/so101_pick_cube", root=root / "ds")
    pixels = torch.stack([ds[i][CAMERA] for i in range(len(ds))]).double()  # (N, 3, H, W) in [0, 1]
    saved = next((tmp_path / "policy" / "pretrained_model").glob("policy_preprocessor_step_*_normalizer_*.safetensors"))
    stats = load_file(saved)
    mean, std = stats[f"{CAMERA}.mean"].reshape(-1).double(), stats[f"{CAMERA}.std"].reshape(-1).double()
    assert torch.allclose(mean, pixels.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(std, pixels.std(dim=(0, 2, 3)), atol=1e-4)
    assert summary["steps"] == 1


def test_the_cube_position_loss_targets_where_each_episode_put_the_cube_and_leaves_a_plain_act(recording, tmp_path):
    """The auxiliary head reads the cube position from each episode's seed; it trains beside ACT and is not
    part of the saved policy (the same parameters as an ACT built from the saved config)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.act.modeling_act import ACTPolicy

    from pai_core.sim.env import BLOCK_XY_BOUNDS
    from pai_core.sim.train import EpisodeFrames, TrainConfig, cube_targets, train_policy

    root, summary = recording
    frames = EpisodeFrames.load(LeRobotDataset("pai/so101_pick_cube", root=root / "ds"), progress=False)
    targets = cube_targets(root / "ds", frames)
    assert targets.shape == (frames.size, 2)
    lo, hi = BLOCK_XY_BOUNDS
    with PickCubeSim(SimConfig(**SMALL)) as sim:
        for episode, start in zip(summary["episodes"], [0, summary["episodes"][0]["frames"]]):
            sim.reset(episode["seed"])
            expected = 2 * (sim.block_pos[:2] - lo) / (hi - lo) - 1
            assert np.allclose(targets[start : start + episode["frames"]].numpy(), expected, atol=1e-6)
    out = train_policy(
        TrainConfig(
            root / "ds",
            tmp_path / "policy",
            steps=2,
            batch_size=4,
            dim_model=32,
            dim_feedforward=64,
            cube_position_loss=1.0,
            state_dropout=0.5,
        ),
        progress=False,
    )
    saved = ACTPolicy.from_pretrained(out["policy_path"])
    assert set(saved.state_dict()) == set(ACTPolicy(saved.config).state_dict())
    assert np.isfinite(out["final_loss"])


def test_start_share_draws_that_share_of_every_batch_from_the_first_frames_of_the_episodes(recording):
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pai_core.sim.train import EpisodeFrames

    root, summary = recording
    frames = EpisodeFrames.load(LeRobotDataset("pai/so101_pick_cube", root=root / "ds"), progress=False)
    first = summary["episodes"][0]["frames"]
    frames.focus_on_start(3, 0.5)
    assert frames.start.tolist() == [0, 1, 2, first, first + 1, first + 2]
    early = {tuple(row) for row in frames.state[frames.start].tolist()}
    generator = torch.Generator().manual_seed(0)
    later = 0
    for _ in range(20):
        states = frames.batch(8, 5, generator)["observation.state"].tolist()
        assert all(tuple(row) in early for row in states[:4])  # half of every batch
        later += sum(tuple(row) not in early for row in states[4:])
    assert later > 40  # the other half is drawn from every frame (6 of the frames are early ones)


def test_the_l2_action_loss_is_the_mean_squared_error_over_the_steps_inside_the_episode(recording, tmp_path):
    """Zero on the policy's own chunk; steps past the episode's end do not count; one step off by d adds
    d^2 over the number of chunk values."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    from pai_core.sim.train import EpisodeFrames, TrainConfig, action_loss, train_policy

    root, _ = recording
    out = train_policy(
        TrainConfig(
            root / "ds", tmp_path / "p", steps=2, batch_size=4, dim_model=32, dim_feedforward=64, action_loss="l2"
        ),
        progress=False,
    )
    assert np.isfinite(out["final_loss"])
    policy = ACTPolicy.from_pretrained(out["policy_path"]).eval()
    pre, _ = make_pre_post_processors(
        policy.config,
        pretrained_path=out["policy_path"],
        preprocessor_overrides={"device_processor": {"device": "cpu"}},
    )
    frames = EpisodeFrames.load(LeRobotDataset("pai/so101_pick_cube", root=root / "ds"), progress=False)
    batch = pre(frames.batch(3, policy.config.chunk_size, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        batch["action"] = policy.predict_action_chunk(batch)  # normalised: the model's own output
        assert float(action_loss(policy, batch)) < 1e-10
        batch["action_is_pad"][0, -1] = True
        batch["action"][0, -1] += 100.0  # past the end: ignored
        assert float(action_loss(policy, batch)) < 1e-10
        batch["action"][1, 0, 2] += 0.5
        assert float(action_loss(policy, batch)) == pytest.approx(0.25 / batch["action"].numel(), rel=1e-4)


@pytest.mark.parametrize(
    "field, value, extra",
    [
        ("cube_position_loss", -1.0, {}),
        ("state_dropout", 1.5, {}),
        ("start_share", 1.5, {}),
        ("start_frames", 0, {"start_share": 0.5}),
        ("action_loss", "l3", {}),
        ("action_loss", "l2", {"use_vae": True}),
    ],
)
def test_training_settings_out_of_range_are_refused_by_name(tmp_path, field, value, extra):
    from pai_core.errors import ConfigError
    from pai_core.sim.train import TrainConfig

    with pytest.raises(ConfigError, match=field):
        TrainConfig(tmp_path, tmp_path / "out", **{field: value}, **extra)


def test_the_camera_effect_is_zero_for_a_policy_that_cannot_see_and_positive_for_one_that_can(tmp_path):
    import torch

    from pai_core.engine import Introspector
    from pai_core.sim.evaluate import camera_effect
    from pai_core.testing import make_act_policy

    with PickCubeSim(SimConfig(**SMALL)) as sim:
        frames = [sim.reset(seed) for seed in (1, 2)]
    engine = Introspector.from_pretrained(str(make_act_policy(tmp_path / "p", cameras={CAMERA: (48, 64)})))
    assert camera_effect(engine, frames) > 1e-4
    with torch.no_grad():  # cut the image tokens off: nothing the decoder reads depends on the camera
        proj = engine.policy.model.encoder_img_feat_input_proj
        proj.weight.zero_()
        proj.bias.zero_()
    assert camera_effect(engine, frames) == 0.0


def test_the_backbone_trains_with_batch_norm_and_saves_as_an_exact_frozen_batch_norm(tmp_path):
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    from pai_core.policy import load_policy
    from pai_core.sim.train import swap_batch_norm
    from pai_core.testing import make_act_policy

    policy = load_policy(str(make_act_policy(tmp_path / "p", cameras={CAMERA: (48, 64)}))).policy
    backbone = policy.model.backbone
    swap_batch_norm(backbone, trainable=True)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    backbone.train()
    images = torch.rand(8, 3, 48, 64) * 3
    for _ in range(3):
        backbone(images)  # batch statistics move the running mean and variance
    backbone.eval()
    trained = backbone(images[:2])["feature_map"]
    swap_batch_norm(backbone, trainable=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert torch.allclose(backbone(images[:2])["feature_map"], trained, atol=1e-5)
    policy.save_pretrained(tmp_path / "saved")
    from lerobot.policies.act.modeling_act import ACTPolicy

    reloaded = ACTPolicy.from_pretrained(tmp_path / "saved").model.backbone  # LeRobot's own frozen layers
    assert torch.allclose(reloaded(images[:2])["feature_map"], trained, atol=1e-5)
    assert float(reloaded.bn1.running_var.sub(1).abs().max()) > 0.01  # the statistics were saved


def test_the_demo_runs_end_to_end_on_tiny_settings_and_a_second_run_reuses_every_stage(tmp_path):
    """Every stage of ``pai demo`` for real (simulator, LeRobot training, SAE, patch_knn calibration, offline
    replay and the live ROS node over loopback DDS), on a few episodes and a few training steps."""
    from pai_core.sim.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        tmp_path / "demo",
        policy="train",
        train_episodes=3,
        calib_episodes=2,
        calibration="expert",  # a 3-step policy succeeds in none; rollouts: test_demo_policy.py
        test_episodes=1,
        ood_episodes=1,
        perturbations=["lighting"],
        replay_perturbation="lighting",
        train_steps=3,
        train_minutes=1.0,
        batch_size=4,
        eval_episodes=1,
        sae_steps=50,
        alpha=0.05,
    )
    report = run_demo(cfg)
    stages = json.loads((cfg.output_dir / "stages.json").read_text())
    assert [s["status"] for s in stages] == ["done"] * len(stages), stages
    assert {s["stage"] for s in stages} >= {
        "record_train",
        "train_policy",
        "evaluate_policy",
        "train_sae",
        "calibrate_ood",
        "evaluate_ood",
        "replay_clean",
        "replay_lighting",
        "replay_ros",
    }
    params = json.loads((cfg.output_dir / "sae" / "ood_params.json").read_text())
    assert params["score"] == "patch_knn" and params["alpha"] == 0.05
    evaluation = json.loads((cfg.output_dir / "ood_eval" / "ood_evaluation.json").read_text())
    assert evaluation["ood_datasets"]["ood_lighting"]["auroc"] > 0.9  # a dimmed scene, even for a 3-step policy
    lit = json.loads((cfg.output_dir / "replay_ros" / "lighting" / "summary.json").read_text())
    assert lit["frames_answered"] == lit["frames_published"] > 0 and lit["alarm_frames"] > 0
    assert lit["max_abs_score_diff_vs_offline"] < 1e-4  # the node and the offline replay share one engine
    assert "closed-loop success rate" in report and (cfg.output_dir / "ood_timeline.png").is_file()
    run_demo(cfg)
    again = json.loads((cfg.output_dir / "stages.json").read_text())
    assert [s["status"] for s in again] == ["cached"] * len(stages)
