"""The CUDA-graph live path on a GPU: the captured graph gives what the eager forward gives, bit for bit
(float32), survives action-queue refills and feature switches, falls back (auto) or fails (on) when a
capture is impossible, is faster at batch 1, and bfloat16 stays close to float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pai_core import IntrospectionConfig, Introspector, ModelError
from tests.conftest import random_observation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")


def cuda_engine(policy_dir, **config) -> Introspector:
    return Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(device="cuda", **config))


def assert_same(a, b):
    assert np.array_equal(a.action, b.action) and np.array_equal(a.action_chunk, b.action_chunk)
    for kind in ("attention", "rollout"):
        for cam in getattr(a, kind):
            assert np.array_equal(getattr(a, kind)[cam], getattr(b, kind)[cam]), f"{kind} {cam}"
    assert a.camera_share == b.camera_share and a.state_share == b.state_share
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.input_tokens, b.input_tokens)


def test_graph_steps_equal_eager_steps_bit_for_bit_through_queue_refills(policy_dir):
    eager, graph = cuda_engine(policy_dir, cuda_graph="off"), cuda_engine(policy_dir)
    assert not eager.graph.active and graph.graph.active
    rng = np.random.default_rng(0)
    observations = [random_observation(eager, rng, t) for t in range(9)]
    kept = []
    for obs in observations:
        a, b = eager.step(obs), graph.step(obs)
        assert_same(a, b)
        kept.append((a, b))
    for a, b in kept:  # results kept across later replays are unchanged
        assert torch.equal(a.tokens, b.tokens)
    assert graph.graph.status.captures == 1 and "captured on cuda" in graph.graph.status.describe()
    assert b.tokens.device.type == "cuda"


def test_graph_recaptures_for_vision_features_and_matches_eager(policy_dir):
    eager, graph = cuda_engine(policy_dir, cuda_graph="off"), cuda_engine(policy_dir)
    obs = random_observation(eager, np.random.default_rng(1))
    graph.step(obs)
    for e in (eager, graph):
        e.adapter.keep_vision_features = True
    a, b = eager.step(obs), graph.step(obs)
    assert graph.graph.status.captures == 2
    for cam, maps in a.vision_features.items():
        assert all(torch.equal(x, y) for x, y in zip(maps, b.vision_features[cam]))


def test_a_capture_that_cannot_work_falls_back_in_auto_and_fails_in_on(policy_dir):
    def syncing(pre):
        def call(obs):
            float(obs["observation.state"].sum())  # a host sync: not allowed while capturing
            return pre(obs)

        return call

    auto, on = cuda_engine(policy_dir), cuda_engine(policy_dir, cuda_graph="on")
    eager = cuda_engine(policy_dir, cuda_graph="off")
    for e in (auto, on):
        e.loaded.preprocessor = syncing(e.loaded.preprocessor)
    obs = random_observation(auto, np.random.default_rng(2))
    assert_same(eager.step(obs), auto.step(obs))
    assert not auto.graph.active and "capture failed" in auto.graph.status.reason
    with pytest.raises(ModelError, match="cuda_graph='on': capturing"):
        on.step(obs)


def test_pipeline_with_sae_features_and_ood_runs_on_the_graph(ood_world):
    from pai_core import Pipeline

    base, policy, _ = ood_world
    graph = Pipeline.load(str(policy), str(base / "sae"), device="cuda")
    eager = Pipeline.load(
        str(policy),
        str(base / "sae"),
        device="cuda",
        engine_config=IntrospectionConfig(device="cuda", cuda_graph="off"),
    )
    assert graph.engine.graph.active
    rng = np.random.default_rng(3)
    for t in range(4):
        obs = random_observation(graph.engine, rng, t)
        a, b = eager.step(obs), graph.step(obs)
        assert np.array_equal(a.result.action, b.result.action)
        assert np.array_equal(np.asarray(a.features), np.asarray(b.features)) and a.ood_score == b.ood_score


def test_graph_is_faster_than_eager_at_batch_one_on_a_realistic_policy(tmp_path):
    import time

    from pai_core.testing import make_act_policy

    cams = {"observation.images.front": (480, 640), "observation.images.wrist": (480, 640)}
    path = make_act_policy(
        tmp_path / "p",
        cameras=cams,
        dim_model=512,
        n_heads=8,
        dim_feedforward=3200,
        n_encoder_layers=4,
        chunk_size=100,
        n_action_steps=100,
    )
    eager, graph = cuda_engine(path, cuda_graph="off"), cuda_engine(path)
    obs = random_observation(eager, np.random.default_rng(4))

    def median_ms(e):
        for _ in range(5):
            e.step(obs)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            e.step(obs)
            times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times))

    eager_ms, graph_ms = median_ms(eager), median_ms(graph)
    print(f"batch-1 step: eager {eager_ms:.2f} ms, graph {graph_ms:.2f} ms")
    assert graph_ms < eager_ms


def test_bfloat16_graph_equals_bfloat16_eager_and_stays_near_float32(policy_dir):
    fp32 = cuda_engine(policy_dir)
    eager16, graph16 = (
        cuda_engine(policy_dir, cuda_graph="off", model_dtype="bfloat16"),
        cuda_engine(policy_dir, model_dtype="bfloat16"),
    )
    rng = np.random.default_rng(5)
    for t in range(4):
        obs = random_observation(fp32, rng, t)
        ref, a, b = fp32.step(obs), eager16.step(obs), graph16.step(obs)
        assert_same(a, b)
        span = float(np.ptp(ref.action_chunk)) or 1.0
        assert float(np.abs(ref.action_chunk - b.action_chunk).max()) <= 0.05 * span
        tv = 0.5 * sum(float(np.abs(ref.attention[c] - b.attention[c]).sum()) for c in ref.attention)
        assert tv <= 0.05
