"""A second signal that looks at the policy: action-chunk consistency, calibrated with the appearance score
to one false-alarm rate."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np

from pai_core.cli import main
from pai_core.ood import ActionConsistency, OODParams, ScoreBatch, joint_thresholds, score_episodes
from pai_core.pipeline import Pipeline
from pai_core.sources.dataset import open_dataset


def chunks_of(engine, rng, trajectory, fps=10.0, n=8):
    """Real engine results of n frames whose action chunks are replaced by ``trajectory(t, k)`` (the action
    the chunk at tick t predicts for step t + k)."""
    from tests.conftest import random_observation

    obs = [replace(random_observation(engine, rng, t=i / fps)) for i in range(n)]
    results = engine.step_batch(obs)
    T, A = results[0].action_chunk.shape
    for t, r in enumerate(results):
        r.action_chunk = np.asarray([[trajectory(t, k, a) for a in range(A)] for k in range(T)], np.float32)
    return results, obs


def test_chunks_that_agree_where_they_overlap_score_zero_and_a_change_of_mind_does_not(policy_dir):
    from pai_core import IntrospectionConfig, Introspector

    engine = Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(rollout=False))
    rng = np.random.default_rng(0)
    scorer = ActionConsistency(np.ones(engine.action_dim), fps=10.0, lags=3, horizon=4)
    steady, obs = chunks_of(engine, rng, lambda t, k, a: math.sin(0.3 * (t + k) + a))
    s = scorer.score(ScoreBatch(steady, obs, np.zeros((len(obs), 1)))).scores
    assert s[0] == 0.0 and np.allclose(s, 0.0, atol=1e-10)
    # only the chunks of the last `lags` actions count: a wild first plan is forgotten 3 frames later
    scorer.reset()
    wild = [copy.copy(r) for r in steady]
    wild[0].action_chunk = wild[0].action_chunk + 5.0
    s = scorer.score(ScoreBatch(wild, obs, np.zeros((len(obs), 1)))).scores
    assert (s[1:4] > 1.0).all() and np.allclose(s[4:], 0.0, atol=1e-10)
    scorer.reset()
    flip, obs = chunks_of(engine, rng, lambda t, k, a: (t % 2) * 2.0)  # alternates between two plans
    s = scorer.score(ScoreBatch(flip, obs, np.zeros((len(obs), 1)))).scores
    assert s[0] == 0.0 and (s[1:] > 1.0).all()
    # lost frames, stamps two steps apart: the plan advanced by one action per frame (pai drives the robot,
    # no frame means no command), or by two (the robot went on, driven on its own clock). Both are
    # consistent; a plan that advances by three a frame, or jumps, is not.
    fresh_obs = chunks_of(engine, rng, lambda t, k, a: 0)[1]
    obs2 = [replace(o, timestamp=2 * i / 10.0) for i, o in enumerate(fresh_obs[:4])]
    zeros = np.zeros((4, 1))
    for plan in (steady[:4], [steady[2 * i] for i in range(4)]):
        scorer.reset()
        assert np.allclose(scorer.score(ScoreBatch(plan, obs2, zeros)).scores, 0.0, atol=1e-10)
    scorer.reset()
    too_fast, _ = chunks_of(engine, rng, lambda t, k, a: math.sin(0.3 * (3 * t + k) + a))
    assert (scorer.score(ScoreBatch(too_fast[:4], obs2, zeros)).scores[1:] > 1e-3).all()
    scorer.reset()
    assert (scorer.score(ScoreBatch(flip[:4], obs2, zeros)).scores[1:] > 1.0).all()


def test_a_republished_image_with_a_fresh_stamp_holds_the_score_and_is_not_compared(policy_dir):
    """A camera that sends its last buffer again beside fresh joint states: the policy predicts from a
    picture of the past. That chunk must neither score nor spoil the next fresh frame's comparison."""
    from pai_core import IntrospectionConfig, Introspector

    engine = Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(rollout=False))
    scorer = ActionConsistency(np.ones(engine.action_dim), fps=10.0, lags=3, horizon=4)
    steady, obs = chunks_of(engine, np.random.default_rng(2), lambda t, k, a: math.sin(0.3 * (t + k) + a))
    for t in (3, 5):  # frames 3 and 5 repeat the image of 2 and 4, and their chunks lag behind
        obs[t] = replace(obs[t], images={k: v.copy() for k, v in obs[t - 1].images.items()})
        steady[t].action_chunk = steady[t - 1].action_chunk.copy()
    s = scorer.score(ScoreBatch(steady, obs, np.zeros((len(obs), 1)))).scores
    assert np.allclose(s, 0.0, atol=1e-10) and scorer.repeated_frames == 2
    # the same chunks with fresh images: the lagging chunks are a change of mind
    scorer.reset()
    fresh = [replace(o, images={k: v ^ np.uint8(i) for k, v in o.images.items()}) for i, o in enumerate(obs)]
    s = scorer.score(ScoreBatch(steady, fresh, np.zeros((len(obs), 1)))).scores
    assert s[3] > 1e-3 and s[5] > 1e-3 and scorer.repeated_frames == 0


def test_joint_thresholds_keep_one_false_alarm_rate_over_two_signals():
    rng = np.random.default_rng(1)
    a, b = rng.exponential(size=4000), rng.lognormal(size=4000)
    thresholds, tau = joint_thresholds({"a": a, "b": b}, 0.05)
    calib_rate = np.mean((a > thresholds["a"]) | (b > thresholds["b"]))
    assert calib_rate <= 0.05 and tau >= 1.0
    fresh_a, fresh_b = rng.exponential(size=20000), rng.lognormal(size=20000)
    assert abs(np.mean((fresh_a > thresholds["a"]) | (fresh_b > thresholds["b"])) - 0.05) < 0.01
    # each signal alone at alpha would alarm on about 2 alpha together
    single = np.mean((fresh_a > np.quantile(a, 0.95)) | (fresh_b > np.quantile(b, 0.95)))
    assert single > 0.08


def test_calibrate_ood_with_the_consistency_signal_saves_joint_thresholds_and_the_pipeline_watches_both(
    ood_world, tmp_path, capsys
):
    from tests.conftest import calibrate_world_copy

    base, policy, _ = ood_world
    sae = tmp_path / "sae"
    calibrate_world_copy(ood_world, sae, "patch_knn", "--signals", "action_consistency")
    printed = json.loads(capsys.readouterr().out)
    assert printed["empirical_rate_on_calibration"] <= 0.1 and "action_consistency" in printed["signals"]
    params = OODParams.load(sae / "ood_params.json")
    assert [s["score"] for s in params.signals] == ["action_consistency"] and params.signals[0]["threshold"] > 0
    pipe = Pipeline.load(str(policy), str(sae))
    assert set(pipe.signals) == {"action_consistency"}
    summary = pipe.ood_summary()  # what /diagnostics shows of the signal
    assert summary["signal_action_consistency_threshold"] == round(params.signals[0]["threshold"], 6)
    assert summary["signal_action_consistency_repeated_frames"] == 0
    fresh = score_episodes(pipe, open_dataset("pai/synthetic", base / "fresh"), progress=False)
    assert all(set(e.signals) == {"action_consistency"} and e.signals["action_consistency"][0] == 0.0 for e in fresh)
    frames = np.concatenate([e.scores / params.threshold for e in fresh])
    either = np.maximum(
        frames, np.concatenate([e.signals["action_consistency"] for e in fresh]) / params.signals[0]["threshold"]
    )
    assert np.mean(either > 1.0) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / either.size)
    dark = score_episodes(pipe, open_dataset("pai/synthetic", base / "dark"), progress=False)
    assert all(e.alarm.any() for e in dark)
    # replay writes the signal beside the appearance score
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(base / "fresh"),
                "--episodes",
                "0",
                "--policy-path",
                str(policy),
                "--sae-path",
                str(sae),
                "--output-dir",
                str(tmp_path / "replay"),
                "--no-progress",
                "--no-video",
                "--no-mcap",
            ]
        )
        == 0
    )
    import pandas as pd

    table = pd.read_parquet(tmp_path / "replay" / "ood.parquet")
    assert table["signal_action_consistency"].notna().all() and table["signal_action_consistency"].iloc[0] == 0.0
    assert (table["signal_action_consistency_threshold"] == params.signals[0]["threshold"]).all()


def test_each_further_signal_is_published_on_its_own_topic_with_its_threshold(policy_dir, tmp_path):
    from pai_core.ood import OODParams
    from pai_core.ros_convert import frame_messages
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from tests.conftest import random_observation

    save_sae(SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8)), tmp_path / "sae")
    OODParams(
        threshold=1e9,
        signals=[
            {"score": "action_consistency", "threshold": 0.25, "signal_params": {"action_std": [1.0] * 6, "fps": 10.0}}
        ],
    ).save(tmp_path / "sae" / "ood_params.json")
    pipe = Pipeline.load(str(policy_dir), str(tmp_path / "sae"))
    rng = np.random.default_rng(2)
    frames = [pipe.step(random_observation(pipe.engine, rng, t=i / 10.0)) for i in range(3)]
    msgs = {m.topic: m for m in frame_messages(frames[-1], pipe, None)}
    assert msgs["~/signal/action_consistency"].fields == {"data": frames[-1].signals["action_consistency"]}
    assert msgs["~/signal/action_consistency/threshold"].fields == {"data": 0.25}
    assert frames[0].signals["action_consistency"] == 0.0 and frames[-1].signals["action_consistency"] > 0.0
