"""The whole trainer workflow on LeRobot's normal format: a video-encoded (AV1), two-camera dataset with
SO-101 joint names, through the ``pai`` CLI as a user runs it; checks before work; joint-state coverage."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from pai_core.cli import main
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 96)}
SO101 = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
REPO = "pai/so101_video"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("video")
    ds = make_lerobot_dataset(
        base / "ds", REPO, cameras=CAMERAS, episodes=6, frames=20, use_videos=True, state_names=SO101, seed=0
    )
    make_lerobot_dataset(
        base / "dark",
        "pai/so101_dark",
        cameras=CAMERAS,
        episodes=2,
        frames=20,
        use_videos=True,
        state_names=SO101,
        seed=5,
        variant="dark",
    )
    policy = make_act_policy(base / "policy", cameras=CAMERAS)
    return base, ds, policy


def pai(*argv) -> int:
    return main([str(a) for a in argv])


def record(ds, policy, out, *extra) -> int:
    """``pai record-activations`` of ``policy`` over the whole dataset into ``out``."""
    return pai(
        "record-activations",
        "--dataset-repo-id",
        REPO,
        "--root",
        ds.root,
        "--policy-path",
        policy,
        "--output-dir",
        out,
        *extra,
    )


@pytest.fixture(scope="module")
def trained(world):
    """``pai record-activations`` then ``pai train-sae`` on the video dataset: (recording summary, SAE dir)."""
    import contextlib
    import io

    base, ds, policy = world
    acts, sae = base / "acts", base / "sae"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert record(ds, policy, acts, "--shard-frames", 20) == 0
    recorded = json.loads(out.getvalue())
    assert (
        pai(
            "train-sae",
            "--activations",
            acts,
            "--output-dir",
            sae,
            "--expansion-factor",
            4,
            "--k",
            8,
            "--aux-k",
            32,
            "--dead-tokens",
            5000,
            "--steps",
            60,
            "--batch-size",
            256,
            "--val-fraction",
            0.34,
        )
        == 0
    )
    return recorded, sae


def test_the_dataset_is_video_encoded_as_real_recordings_are(world):
    _, ds, _ = world
    assert sorted(ds.meta.video_keys) == sorted(CAMERAS)
    assert list(ds.meta.features["observation.state"]["names"]) == SO101


def test_the_whole_workflow_runs_on_a_video_encoded_two_camera_dataset(world, trained, capsys):
    base, ds, policy = world
    recorded, sae = trained
    assert recorded["frames_recorded"] == 120 and recorded["shards"] == 6
    assert json.loads((sae / "config.json").read_text())  # the SAE trained on the recorded tokens
    capsys.readouterr()
    assert (
        pai(
            "calibrate-ood",
            "--sae-path",
            sae,
            "--policy-path",
            policy,
            "--dataset-repo-id",
            REPO,
            "--root",
            ds.root,
            "--alpha",
            0.1,
            "--score",
            "patch_knn",
        )
        == 0
    )
    calibrated = json.loads(capsys.readouterr().out)
    params = json.loads((sae / "ood_params.json").read_text())
    assert calibrated["score"] == "patch_knn" and params["n_calibration"] == 40  # the two held-out episodes
    assert params["reference_summary"]["frames"] == 120 and params["reference_summary"]["leave_own_episode_out"]
    assert (
        pai(
            "evaluate-ood",
            "--sae-path",
            sae,
            "--policy-path",
            policy,
            "--id",
            ds.root,
            "--id-episodes",
            0,
            1,
            "--ood",
            base / "dark",
            "--output-dir",
            base / "eval",
        )
        == 0
    )
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["auroc"] > 0.9 and evaluation["ood_episodes_detected"] == 1.0
    assert (
        pai(
            "record-features",
            "--dataset-repo-id",
            REPO,
            "--root",
            ds.root,
            "--policy-path",
            policy,
            "--sae-path",
            sae,
            "--episodes",
            "0",
            "--output-dir",
            base / "features",
        )
        == 0
    )
    capsys.readouterr()
    table = pd.read_parquet(next((base / "features").glob("*.parquet")))
    assert len(table) == 20
    assert (
        pai(
            "analyse-features",
            "--record-dir",
            base / "features",
            "--output-dir",
            base / "analysis",
            "--top-features",
            2,
            "--clips-per-feature",
            1,
        )
        == 0
    )
    assert (base / "analysis" / "index.html").is_file()
    assert (
        pai(
            "replay",
            "--dataset-repo-id",
            REPO,
            "--root",
            ds.root,
            "--episodes",
            0,
            "--policy-path",
            policy,
            "--sae-path",
            sae,
            "--output-dir",
            base / "replay",
            "--no-progress",
        )
        == 0
    )
    summary = json.loads((base / "replay" / "summary.json").read_text())
    assert summary["accounting"]["frames_processed"] == 20 and summary["frames skipped"] == 0
    assert summary["alarm frames"] == 0  # episode 0 is in the reference: a clean run stays quiet
    assert summary["reference_frames"] == 120 and summary["reference_memory_mapped"]
    ood = pd.read_parquet(base / "replay" / "ood.parquet")
    assert (ood["state_coverage"] <= 1.0).all()


def test_an_alpha_the_calibration_frames_cannot_give_is_refused_before_any_scoring(world, trained, tmp_path, capsys):
    import shutil

    _, ds, policy = world
    sae = tmp_path / "sae"
    shutil.copytree(trained[1], sae)
    (sae / "ood_reference.safetensors").unlink(missing_ok=True)
    started = time.perf_counter()
    assert (
        pai(
            "calibrate-ood",
            "--sae-path",
            sae,
            "--policy-path",
            policy,
            "--dataset-repo-id",
            REPO,
            "--root",
            ds.root,
            "--alpha",
            0.01,
            "--score",
            "patch_knn",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "alpha=0.01 needs at least 99 calibration frames" in err and "hold 40" in err
    assert "alpha >= 0.0244" in err  # 1 / 41, rounded up: what the 40 frames allow
    assert not (sae / "ood_reference.safetensors").exists()  # no reference was fitted
    assert time.perf_counter() - started < 30


def test_a_policy_camera_the_dataset_lacks_is_named_before_any_forward(world, tmp_path, capsys):
    _, ds, _ = world
    other = make_act_policy(tmp_path / "policy", cameras={"observation.images.top": (96, 128)})
    assert record(ds, other, tmp_path / "acts") == 1
    err = capsys.readouterr().err
    assert "lacks cameras ['observation.images.top']" in err and "observation.images.wrist" in err
    assert not list((tmp_path / "acts").glob("*.safetensors"))


def test_a_state_of_another_size_is_named_with_the_datasets_joint_names(world, tmp_path, capsys):
    _, ds, _ = world
    other = make_act_policy(tmp_path / "policy", cameras=CAMERAS, state_dim=7, action_dim=7)
    assert record(ds, other, tmp_path / "acts") == 1
    err = capsys.readouterr().err
    assert "6-value observation.state" in err and "shoulder_pan.pos" in err and "needs 7 values" in err


# ------------------------------------------------------------------------------------------ coverage
def test_uncovered_calibration_frames_are_named_kept_out_of_the_threshold_and_never_latch_the_alarm(tmp_path, capsys):
    """Episode 5 starts in joint states no other episode visits; the held-out episodes are 4 and 5. Those
    frames must not set the threshold, must be named, and replaying the calibration episodes must stay
    quiet (the calibration episodes are in the reference)."""
    from pai_core.activations import ActivationStore, RecordConfig, record_activations, token_batches
    from pai_core.ood import OODParams, score_episodes
    from pai_core.pipeline import Pipeline
    from pai_core.sae import TrainConfig, train_sae

    torch.set_num_threads(1)
    camera = {"observation.images.front": (96, 128)}
    ds = make_lerobot_dataset(
        tmp_path / "ds",
        cameras=camera,
        episodes=6,
        frames=20,
        seed=3,
        state_shift=lambda ep, i: 4.0 if ep == 5 and i < 6 else 0.0,
    )
    policy = make_act_policy(tmp_path / "policy", cameras=camera)
    record_activations(ds, str(policy), tmp_path / "acts", config=RecordConfig(shard_frames=20), progress=False)
    store = ActivationStore(tmp_path / "acts")
    train = [s for s in store.shards if store.shard_episode(s) < 4]
    extra = {
        "dataset_root": str(ds.root),
        "dataset": "pai/synthetic",
        "train_episodes": [0, 1, 2, 3],
        "held_out_episodes": [4, 5],
    }
    train_sae(
        token_batches(train, 256, repeat=True),
        64,
        tmp_path / "sae",
        TrainConfig(expansion_factor=4, k=8, aux_k=32, dead_tokens=5000, steps=60, batch_size=256),
        policy=str(policy),
        extra=extra,
        progress=False,
    )
    assert (
        pai(
            "calibrate-ood",
            "--sae-path",
            tmp_path / "sae",
            "--policy-path",
            policy,
            "--dataset-repo-id",
            "pai/synthetic",
            "--root",
            ds.root,
            "--alpha",
            0.1,
            "--score",
            "patch_knn",
        )
        == 0
    )
    capsys.readouterr()
    params = OODParams.load(tmp_path / "sae" / "ood_params.json")
    assert params.coverage["episodes"] == {"5": "0-5"} and params.coverage["excluded_frames"] == 6
    assert params.n_calibration == 34
    pipe = Pipeline.load(str(policy), str(tmp_path / "sae"))
    replayed = score_episodes(pipe, ds, [4, 5], progress=False)
    assert not any(e.alarm.any() for e in replayed)
    assert not any(e.uncovered.any() for e in replayed)  # in the reference now: covered
    far = score_episodes(pipe, ds, [5], progress=False, leave_out_own_episode=True)[0]
    assert far.uncovered[:6].all() and not far.uncovered[6:].any()


def test_farthest_point_selection_keeps_a_briefly_visited_region_that_a_stride_drops():
    from pai_core.ood.patch_knn import select_coverage

    rng = np.random.default_rng(0)
    states = np.concatenate([rng.normal(0, 0.1, (995, 2)), rng.normal(5, 0.1, (5, 2))])  # 5 frames far away
    keep = select_coverage(states, 50)
    assert len(keep) == 50 and (keep >= 995).any()
    stride = np.arange(0, 1000, 20)
    assert not (stride >= 995).any()


def test_the_reference_streams_into_float16_and_loads_memory_mapped(tmp_path):
    from pai_core.ood.patch_knn import PatchKnnConfig, PatchKnnScorer, ReferenceBuilder

    rng = torch.Generator().manual_seed(0)
    cfg = PatchKnnConfig(k_frames=3, max_grid=(6, 8))
    builder = ReferenceBuilder(40, cfg)
    grids = torch.randn(40, 4, 6, 8, generator=rng) * 3 + 10
    states = np.repeat(np.arange(10, dtype=np.float32)[None], 4, 0).reshape(-1, 1)
    for ep in range(4):
        builder.add({"cam": grids[ep * 10 : (ep + 1) * 10]}, states[ep * 10 : (ep + 1) * 10], ep)
    assert builder.patches["cam"].dtype == torch.float16
    streamed = builder.finish()
    whole = PatchKnnScorer.from_grids({"cam": grids}, states, np.repeat(np.arange(4), 10), cfg)
    assert torch.allclose(streamed.cameras["cam"].patches.float(), whole.cameras["cam"].patches.float(), atol=1e-2)
    path = streamed.save_file(tmp_path / "ref.safetensors")
    mapped = PatchKnnScorer.load_file(path)
    assert (
        mapped.describe()["memory_mapped"]
        and not PatchKnnScorer.load_file(path, mmap=False).describe()["memory_mapped"]
    )
    probe = {"cam": [grids[3:4]]}
    assert np.allclose(mapped.score_maps(probe, states[3:4]).scores, streamed.score_maps(probe, states[3:4]).scores)
    with pytest.raises(ValueError, match="sized for 40"):
        builder.add({"cam": grids[:1]}, states[:1], 0)


# ------------------------------------------------------------------------------------------ validation
def test_files_made_for_another_policy_of_the_same_width_are_refused_naming_both(world, trained, tmp_path, capsys):
    import shutil

    from pai_core import ModelError
    from pai_core.pipeline import Pipeline

    base, ds, policy = world
    sae = tmp_path / "sae"
    shutil.copytree(trained[1], sae)
    (sae / "ood_params.json").unlink(missing_ok=True)
    other = make_act_policy(tmp_path / "other", cameras=CAMERAS, seed=1)  # same architecture, other weights
    with pytest.raises(ModelError, match="SAE was made for policy") as err:
        Pipeline.load(str(other), str(sae))
    assert str(policy) in str(err.value) and str(other) in str(err.value)
    assert (
        pai(
            "replay",
            "--dataset-repo-id",
            REPO,
            "--root",
            ds.root,
            "--episodes",
            0,
            "--policy-path",
            other,
            "--sae-path",
            sae,
            "--output-dir",
            tmp_path / "replay",
            "--no-progress",
        )
        == 1
    )
    assert "SAE was made for policy" in capsys.readouterr().err
    Pipeline.load(str(policy), str(sae))  # its own policy loads


@pytest.mark.parametrize("threshold", ["NaN", "Infinity", '"0.5"', "null"])
def test_a_threshold_that_is_not_a_finite_number_is_refused_naming_the_file_and_field(tmp_path, threshold):
    from pai_core import ModelError
    from pai_core.ood import OODParams

    path = tmp_path / "ood_params.json"
    path.write_text(f'{{"threshold": {threshold}, "alpha": 0.01, "score": "sae_recon_mse"}}')
    with pytest.raises(ModelError, match="threshold=.* must be a finite number") as err:
        OODParams.load(path)
    assert str(path) in str(err.value)


def test_evaluate_and_replay_name_a_missing_camera_before_any_forward(world, trained, tmp_path, capsys):
    base, ds, policy = world
    one_camera = make_lerobot_dataset(
        tmp_path / "one",
        "pai/one_camera",
        cameras={"observation.images.front": (96, 128)},
        episodes=1,
        frames=4,
        state_names=SO101,
    )
    import shutil

    from pai_core import Introspector
    from pai_core.ood import OODParams

    sae = tmp_path / "sae"
    shutil.copytree(trained[1], sae)
    OODParams(threshold=1.0, policy_fingerprint=Introspector.from_pretrained(str(policy)).fingerprint).save(
        sae / "ood_params.json"
    )
    assert (
        pai(
            "replay",
            "--dataset-repo-id",
            "pai/one_camera",
            "--root",
            one_camera.root,
            "--episodes",
            0,
            "--policy-path",
            policy,
            "--sae-path",
            sae,
            "--output-dir",
            tmp_path / "replay",
            "--no-progress",
        )
        == 1
    )
    assert "lacks cameras ['observation.images.wrist']" in capsys.readouterr().err
    assert (
        pai(
            "evaluate-ood",
            "--sae-path",
            sae,
            "--policy-path",
            policy,
            "--id",
            ds.root,
            "--ood",
            one_camera.root,
            "--output-dir",
            tmp_path / "eval",
        )
        == 1
    )
    assert "lacks cameras ['observation.images.wrist']" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "ood_evaluation.json").exists()
