"""The closed-loop failure benchmark (bench/failure.py): disturbances that really change the simulation, the
metrics on episodes whose answers can be worked out by hand, and the loop itself on a tiny real setup
(simulator, random-init ACT for the sim's camera and joints, SAE, patch_knn + action_consistency)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.failure as fb  # noqa: E402
from pai_core.sim.disturb import (  # noqa: E402
    HIDDEN_POS,
    INTRUDER_HALF_SIZE,
    Disturbance,
    Disturber,
    cube_held,
    intruder_pos,
    make_sim,
)
from pai_core.sim.env import BLOCK_XY_BOUNDS, CAMERA, PickCubeSim, SimConfig  # noqa: E402
from pai_core.sim.expert import PickExpert  # noqa: E402

TINY = dict(height=32, width=32)


# ------------------------------------------------------------------------------------------ disturbances
def test_a_push_slides_the_cube_its_distance_along_the_table_at_its_step_and_not_before():
    with PickCubeSim(SimConfig(**TINY)) as sim:
        obs = sim.reset(10_000)
        disturber = Disturber(Disturbance("push", step=4, distance=0.06), seed=10_000)
        for step in range(4):
            assert not disturber.maybe_apply(sim, step)
            obs, _ = sim.step(np.array([0.0, 0.0, 0.0, 1.0]))
        before = sim.block_pos.copy()
        assert disturber.maybe_apply(sim, 4) and disturber.applied_at == 4
        after = sim.block_pos
        assert np.linalg.norm(after[:2] - before[:2]) == pytest.approx(0.06, abs=1e-4)
        assert after[2] == pytest.approx(sim.block_half_size, abs=1e-4)  # on the table
        assert np.all(after[:2] >= BLOCK_XY_BOUNDS[0] - 1e-9) and np.all(after[:2] <= BLOCK_XY_BOUNDS[1] + 1e-9)
        moved = sim.observation().images[CAMERA].astype(int)
        assert np.abs(moved - obs.images[CAMERA]).mean() > 0.1  # the camera sees it
        assert not disturber.maybe_apply(sim, 5)  # once per episode
        sim.step(np.array([0.0, 0.0, 0.0, 1.0]))
        assert np.linalg.norm(sim.block_pos[:2] - after[:2]) < 0.005  # it stays where it was put


def test_the_cube_slips_only_once_it_is_held_and_lands_on_the_table_beside_the_gripper():
    with PickCubeSim(SimConfig(**TINY)) as sim:
        sim.reset(10_000)
        expert = PickExpert(sim.config.action_scale)
        disturber = Disturber(Disturbance("slip"), seed=10_000)
        success = False
        for step in range(45):
            held = cube_held(sim)
            applied = disturber.maybe_apply(sim, step)
            assert applied == (held and disturber.applied_at == step)
            if applied:
                assert sim.block_pos[2] == pytest.approx(sim.block_half_size, abs=1e-4)
                gap = np.linalg.norm(sim.block_pos[:2] - sim.grasp_point[:2])
                assert gap == pytest.approx(0.05, abs=1e-3) and not cube_held(sim)
            _, picked = sim.step(expert.act(sim.grasp_point, sim.block_pos))
            success = success or picked
        assert disturber.applied_at is not None and disturber.applied_at > 15  # after the grasp, not at once
        assert disturber.info["cube_before"][2] > sim.block_half_size + 0.01  # it was lifted when it slipped
        assert not success  # the expert, already lifting, does not pick it up again


def test_an_object_appears_beside_the_cube_at_its_step_in_a_scene_that_looks_clean_until_then():
    cfg = SimConfig(**TINY)
    with PickCubeSim(cfg) as clean:
        clean_first = clean.reset(10_001).images[CAMERA]
    disturbance = Disturbance("appear", step=2)
    with make_sim(cfg, disturbance) as sim:
        obs = sim.reset(10_001)
        assert np.array_equal(obs.images[CAMERA], clean_first)  # hidden: the clean scene's frame
        assert np.allclose(intruder_pos(sim), HIDDEN_POS)
        disturber = Disturber(disturbance, seed=10_001)
        for step in range(3):
            if disturber.maybe_apply(sim, step):
                break
            obs, _ = sim.step(np.array([0.0, 0.0, 0.0, 1.0]))
        assert disturber.applied_at == 2
        box = intruder_pos(sim)
        gap = np.linalg.norm(box[:2] - sim.block_pos[:2])
        assert gap == pytest.approx(sim.block_half_size + 0.015 + INTRUDER_HALF_SIZE[0], abs=1e-4)
        assert box[2] == pytest.approx(INTRUDER_HALF_SIZE[2])  # standing on the table
        shown = sim.observation().images[CAMERA].astype(int)
        assert np.abs(shown - obs.images[CAMERA]).max() > 50  # an orange box in view
        sim.reset(10_002)
        assert np.allclose(intruder_pos(sim), HIDDEN_POS)  # a new episode starts without it


def test_disturbance_settings_are_checked_naming_the_allowed_values():
    with pytest.raises(ValueError, match="push"):
        Disturbance("shake")
    with pytest.raises(ValueError, match="step"):
        Disturbance("push", step=-3)
    with pytest.raises(ValueError, match="hold"):
        fb.FailureBenchConfig("p", "s", skipped_frame="freeze")
    with pytest.raises(ValueError, match="jpeg50"):
        fb.FailureBenchConfig("p", "s", conditions=["fog"])


# ------------------------------------------------------------------------------------------ metrics
def rec(
    success: bool, stats: list[float], alarm: int | None, onset: int = 0, condition: str = "c", kind: str = "nuisance"
) -> fb.EpisodeRecord:
    """An episode with one frame per step and one detector, pai."""
    steps = len(stats)
    return fb.EpisodeRecord(
        condition,
        kind,
        0,
        success,
        steps,
        onset,
        None if success else steps - 1,
        list(range(steps)),
        {fb.PAI: fb.Trace(list(stats), alarm)},
    )


def test_false_stops_count_successful_episodes_whose_alarm_rose():
    records = [
        rec(True, [0.1] * 5, None),
        rec(True, [2.0] * 5, 2),
        rec(True, [0.3] * 5, None),
        rec(False, [2.0] * 5, 2),
    ]
    assert fb.false_stops(records, fb.PAI) == fb.Rate(1, 3)


def test_a_failure_is_caught_when_its_alarm_rises_between_the_onset_and_the_lost_step():
    records = [
        rec(False, [0.1] * 10, 6, onset=4),  # caught, 3 steps before lost (9)
        rec(False, [0.1] * 10, 2, onset=4),  # premature: before the disturbance was visible
        rec(False, [0.1] * 10, None),  # missed
        rec(False, [0.1] * 10, 0),
    ]  # caught at once, lost 9 steps later
    assert fb.caught(records, fb.PAI) == fb.Rate(2, 4)
    assert fb.premature(records, fb.PAI) == fb.Rate(1, 4)
    assert sorted(fb.lead_times(records, fb.PAI)) == [3, 9]
    assert fb.median(fb.lead_times(records, fb.PAI)) == 6.0
    assert sorted(fb.onset_delays(records, fb.PAI)) == [0, 2]


def test_the_episode_auroc_ranks_failures_by_their_highest_statistic_after_the_onset():
    ok = [rec(True, [0.2, 0.5, 0.1], None), rec(True, [0.8, 0.3], None)]  # episode statistics 0.5, 0.8
    bad = [
        rec(False, [0.1, 1.2, 0.4], 1),  # 1.2
        rec(False, [5.0, 0.2, 0.7, 0.3], None, onset=2),
    ]  # 0.7: the 5.0 before the onset does not count
    assert fb.episode_statistic(bad[1], fb.PAI) == 0.7
    # pairs (failure > success): 1.2 > 0.5, 1.2 > 0.8, 0.7 > 0.5, 0.7 < 0.8 -> 3 of 4
    assert fb.failure_auroc(ok + bad, fb.PAI) == pytest.approx(0.75)
    assert fb.failure_auroc(ok, fb.PAI) is None  # no failures: nothing to rank


def test_rates_carry_their_95_percent_wilson_interval():
    lo, hi = fb.Rate(0, 10).interval()
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = fb.Rate(5, 10).interval()
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))
    assert fb.Rate(50, 100).plus_minus == pytest.approx(0.0962, abs=1e-3)


def test_the_false_stop_target_needs_every_clean_and_nuisance_condition_measured_and_within_five_percent():
    quiet = [rec(True, [0.1], None, condition="clean", kind="clean") for _ in range(19)]
    quiet.append(rec(True, [2.0], 0, condition="clean", kind="clean"))  # 1 of 20 = 5 %: within
    kinds = {"clean": "clean", "jpeg50": "nuisance", "push": "disturbance"}
    only_failures = [
        rec(False, [0.1, 2.0], 1, condition="jpeg50"),
        rec(False, [0.1, 3.0], 1, condition="push", kind="disturbance"),
    ]
    t = fb.targets(quiet + only_failures, kinds)
    assert not t["false_stops"]["met"] and t["false_stops"]["untested"] == ["jpeg50"]
    assert t["false_stops"]["per_condition"]["clean"]["k"] == 1 and t["false_stops"]["missed"] == []
    assert t["catch"]["k"] == 2 and t["catch"]["n"] == 2 and t["catch"]["met"]
    # failures 2.0 and 3.0 against 19 successes at 0.1 and one at 2.0: 3.0 beats all 20, 2.0 beats 19 and ties one
    assert t["auroc"]["value"] == pytest.approx((20 + 19.5) / 40)
    assert t["auroc"]["met"]
    t = fb.targets(quiet + [rec(True, [0.1], None, condition="jpeg50")], {"clean": "clean", "jpeg50": "nuisance"})
    assert t["false_stops"]["met"] and t["auroc"]["value"] is None and not t["auroc"]["met"]


def test_the_training_scene_auroc_leaves_out_perturbed_successes_the_alarm_is_meant_to_raise():
    kinds = {"clean": "clean", "distractor": "perturbation"}
    records = [rec(True, [0.2], None, condition="clean", kind="clean") for _ in range(3)]
    records.append(rec(False, [0.1, 1.5], 1, condition="clean", kind="clean"))
    records.append(rec(True, [4.0], 0, condition="distractor", kind="perturbation"))  # novel scene, alarmed
    au = fb.targets(records, kinds)["auroc"]
    # all pooled: the failure (1.5) beats the 3 clean successes but not the alarmed distractor success (4.0)
    assert au["value"] == pytest.approx(3 / 4) and not au["met"]
    assert au["training_scene"] == {"value": 1.0, "failed": 1, "successful": 3}


def test_clean_frames_above_threshold_are_held_against_alpha_frame_by_frame():
    clean = [
        rec(True, [0.1] * 99 + [1.5], 99, condition="clean", kind="clean"),  # 1 of 100 frames above
        rec(True, [0.5] * 100, None, condition="clean", kind="clean"),
        rec(False, [3.0] * 50, 2, condition="clean", kind="clean"),
    ]  # a failure's frames may be novel
    noisy = [rec(True, [2.0] * 10, 0, condition="jpeg50")]  # nuisance frames are not the clean rate
    kinds = {"clean": "clean", "jpeg50": "nuisance"}
    t = fb.targets(clean + noisy, kinds, alpha=0.01)["clean_frames"]
    assert (t["k"], t["n"], t["met"]) == (1, 200, True)
    t = fb.targets(clean + noisy, kinds, alpha=0.001)["clean_frames"]
    assert t["rate"] == 0.005 and not t["met"]
    assert not fb.targets(noisy, kinds, alpha=0.01)["clean_frames"]["met"]  # no clean frame: not measured


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Expert episodes of the sim at 48x64, a random-init ACT for its camera, joints and actions, an SAE on
    its tokens, patch_knn + action_consistency calibrated on the SAE's held-out episode."""
    import torch

    from pai_core.cli import main
    from pai_core.sim.record import RecordConfig, record
    from pai_core.testing import make_act_policy

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("failure")
    ds = base / "ds"
    record(RecordConfig(ds, episodes=3, seed=0, hold_steps=0, sim=SimConfig(height=48, width=64)), progress=False)
    policy = make_act_policy(
        base / "policy", cameras={CAMERA: (48, 64)}, state_dim=6, action_dim=4, chunk_size=4, n_action_steps=2
    )
    assert (
        main(
            [
                "train-sae",
                "--dataset-repo-id",
                "pai/so101_pick_cube",
                "--root",
                str(ds),
                "--policy-path",
                str(policy),
                "--output-dir",
                str(base / "sae"),
                "--steps",
                "30",
                "--batch-size",
                "256",
                "--expansion-factor",
                "4",
                "--k",
                "8",
                "--aux-k",
                "32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "calibrate-ood",
                "--sae-path",
                str(base / "sae"),
                "--policy-path",
                str(policy),
                "--dataset-repo-id",
                "pai/so101_pick_cube",
                "--root",
                str(ds),
                "--alpha",
                "0.1",
                "--score",
                "patch_knn",
                "--signals",
                "action_consistency",
            ]
        )
        == 0
    )
    return base, policy, base / "sae"


def test_each_tick_is_one_forward_whose_action_drives_the_sim_and_pai_alarm_is_the_pipelines(tiny_setup):
    from pai_core.alarm import AlarmPolicy

    _, policy, sae = tiny_setup
    cfg = fb.FailureBenchConfig(
        str(policy), str(sae), conditions=["frame_skip"], episodes=1, max_steps=10, baseline="none"
    )
    pipe = fb.load_pipeline(cfg)
    calls = []
    forward = pipe.engine.adapter.forward
    pipe.engine.adapter.forward = lambda batch: calls.append(1) or forward(batch)
    cond = fb.build_conditions()["frame_skip"]
    with PickCubeSim(SimConfig(height=48, width=64, max_steps=10)) as sim:
        r = fb.run_episode(pipe, sim, cond, 10_000, cfg)
        assert r.frame_steps == list(range(0, r.steps, 2)) and len(calls) == len(r.frame_steps)
        # holding on lost frames is slower, not lost: the episode gets as many frames as a clean one
        assert not r.success and r.steps == 2 * cfg.max_steps and len(r.frame_steps) == cfg.max_steps
        calls.clear()
        r = fb.run_episode(pipe, sim, fb.build_conditions()["clean"], 10_000, cfg)
    assert r.frame_steps == list(range(r.steps)) and len(calls) == r.steps
    # pai's alarm step is the Pipeline's: its own n-of-m over the recorded statistic gives the same step
    policy_alarm = AlarmPolicy(pipe.alarm.config)
    first = next(
        (t for t, s in zip(r.frame_steps, r.detectors[fb.PAI].stats) if policy_alarm.update(s, 1.0).active), None
    )
    assert first == r.alarm_step
    stats = np.array([r.detectors[name].stats for name in fb.signal_names(pipe)])
    assert np.allclose(r.detectors[fb.PAI].stats, stats.max(axis=0))


def test_the_benchmark_runs_end_to_end_and_writes_its_table_json_and_plot(tiny_setup, tmp_path):
    _, policy, sae = tiny_setup
    conditions = ["clean", "jpeg50", "frame_repeat", "push", "appear"]
    cfg = fb.FailureBenchConfig(
        str(policy), str(sae), conditions=conditions, episodes=1, max_steps=8, disturb_step=3, baseline_steps=20
    )
    result = fb.run(cfg, tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "failure.json").read_text())
    assert (tmp_path / "out" / "failure.png").stat().st_size > 10_000
    assert saved["detectors"] == ["pai", "patch_knn", "action_consistency", "seed"]
    assert list(saved["summary"]["conditions"]) == conditions
    assert len(saved["episodes"]) == len(conditions)
    for ep in saved["episodes"]:
        assert isinstance(ep["success"], bool) and 1 <= ep["steps"] <= 8
        assert ep["lost_step"] == (None if ep["success"] else ep["steps"] - 1)
        for name, trace in ep["detectors"].items():
            assert trace["alarm_step"] is None or 0 <= trace["alarm_step"] < ep["steps"], name
            assert len(trace["stats"]) == len(ep["frame_steps"]) == ep["steps"]
        assert (ep["alarm_signal"] is None) == (ep["detectors"]["pai"]["alarm_step"] is None)
    by = {ep["condition"]: ep for ep in saved["episodes"]}
    assert by["push"]["onset_step"] == 3 and by["push"]["disturbance"]["step"] == 3
    assert by["appear"]["onset_step"] == 3 and "object_at" in by["appear"]["disturbance"]
    assert by["clean"]["onset_step"] == 0 and by["clean"]["disturbance"] is None
    pooled = saved["summary"]["pooled"]["detectors"]["pai"]
    assert pooled["failed_episodes"] + pooled["successful_episodes"] == len(conditions)
    assert set(saved["summary"]["targets"]) == {"pai", "seed"}
    table = fb.format_table(result)
    assert all(c in table for c in conditions) and "Targets, pai's alarm" in table and "+-" in table


def test_conditions_spread_over_worker_processes_give_the_episodes_one_process_gives(tiny_setup, tmp_path):
    _, policy, sae = tiny_setup
    cfg = fb.FailureBenchConfig(
        str(policy), str(sae), conditions=["clean", "push"], episodes=1, max_steps=6, disturb_step=2, baseline="none"
    )
    one = fb.run(cfg, tmp_path / "one", progress=False)["episodes"]
    two = fb.run(replace(cfg, workers=2), tmp_path / "two", progress=False)["episodes"]
    assert [e["condition"] for e in two] == ["clean", "push"]
    for a, b in zip(one, two):
        assert (a["success"], a["steps"], a["onset_step"], a["frame_steps"]) == (
            b["success"],
            b["steps"],
            b["onset_step"],
            b["frame_steps"],
        )
        for name, trace in a["detectors"].items():
            assert np.allclose(trace["stats"], b["detectors"][name]["stats"], rtol=1e-4, atol=1e-6), name
    with pytest.raises(fb.InputError, match="workers=0"):
        replace(cfg, workers=0)


def test_missing_demo_outputs_are_named_with_what_makes_them(tmp_path, capsys):
    assert fb.main(["--demo-dir", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "policy: no LeRobot pretrained_model" in err and "SAE: no model.safetensors" in err and "make demo" in err
