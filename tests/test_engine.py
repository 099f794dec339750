"""The engine against LeRobot itself: same actions, maps derived from the real forward pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pai_core import InputError, IntrospectionConfig, Introspector, Observation
from pai_core.policy import load_policy
from pai_core.testing import make_act_policy
from tests.conftest import random_observation


def lerobot_actions(policy_path, observations):
    """Reference: LeRobot's own loop, postprocessor(policy.select_action(preprocessor(obs)))."""
    ref = load_policy(policy_path)
    ref.policy.reset()
    engine = Introspector(load_policy(policy_path))  # only used to build the same input dict
    out = []
    with torch.inference_mode():
        for obs in observations:
            batch = ref.preprocessor(engine.observation_to_dict(obs))
            out.append(ref.postprocessor(ref.policy.select_action(batch)).numpy()[0])
    return out


@pytest.mark.parametrize("ensemble", [None, 0.01], ids=["action-queue", "temporal-ensembling"])
def test_step_returns_the_same_actions_as_select_action_bit_for_bit(tmp_path, ensemble):
    path = make_act_policy(
        tmp_path / "p", chunk_size=5, n_action_steps=1 if ensemble else 3, temporal_ensemble_coeff=ensemble, seed=3
    )
    engine = Introspector.from_pretrained(str(path))
    rng = np.random.default_rng(0)
    observations = [random_observation(engine, rng, t) for t in range(8)]
    expected = lerobot_actions(path, observations)
    engine.reset()
    got = [engine.step(o).action for o in observations]
    for step, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == (6,)
        assert np.array_equal(a, b), f"step {step}: {a} != {b}"
    # The chunk changes every step (a forward per observation) while the queue is only refilled every
    # n_action_steps: introspection did not disturb LeRobot's queue.
    assert len(set(map(tuple, np.round(got, 6)))) == len(got)


@pytest.mark.parametrize(
    "cameras",
    [
        {"observation.images.top": (64, 96)},
        {"observation.images.front": (96, 128), "observation.images.wrist": (48, 64)},
        {"observation.images.a": (70, 100), "observation.images.b": (64, 64), "observation.images.c": (33, 130)},
    ],
    ids=["1-camera", "2-cameras", "3-cameras"],
)
def test_maps_follow_each_cameras_feature_map_and_are_normalised(tmp_path, cameras):
    engine = Introspector.from_pretrained(str(make_act_policy(tmp_path / "p", cameras=cameras)))
    res = engine.step(random_observation(engine, np.random.default_rng(1)))
    assert list(res.attention) == list(cameras)
    for name, (h, w) in cameras.items():
        expected = (math.ceil(h / 32), math.ceil(w / 32))
        assert res.attention[name].shape == expected
        assert res.rollout[name].shape == expected
        assert np.all(np.isfinite(res.attention[name])) and np.all(res.attention[name] >= 0)
    total = sum(res.camera_share.values()) + res.state_share + res.latent_share
    assert total == pytest.approx(1.0, abs=1e-5)
    assert sum(m.sum() for m in res.rollout.values()) <= 1.0 + 1e-5
    assert res.layout.num_tokens == 2 + sum(math.ceil(h / 32) * math.ceil(w / 32) for h, w in cameras.values())
    assert res.tokens.shape == (res.layout.num_tokens, 64)
    assert res.action_chunk.shape == (10, 6)


def test_rollout_equals_a_plain_numpy_reference(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(2))
    # Capture attention with our own hooks, independent of the engine's adapter.
    model = engine.policy.model
    enc, cross = [], []
    handles = [
        layer.self_attn.register_forward_hook(lambda m, i, o: enc.append(o[1][0].numpy().astype(np.float64)))
        for layer in model.encoder.layers
    ]
    handles.append(
        model.decoder.layers[-1].multihead_attn.register_forward_hook(
            lambda m, i, o: cross.append(o[1][0].numpy().astype(np.float64))
        )
    )
    res = engine.step(obs)
    for h in handles:
        h.remove()
    n = enc[0].shape[0]
    rollout = np.eye(n)
    for a in enc:  # R = Â_L ... Â_1, built as full matrices
        a_hat = 0.5 * a + 0.5 * np.eye(n)
        a_hat /= a_hat.sum(axis=1, keepdims=True)
        rollout = a_hat @ rollout
    relevance = cross[0].mean(axis=0) @ rollout
    for cam in res.layout.cameras:
        ref = relevance[cam.start : cam.stop].reshape(cam.height, cam.width)
        np.testing.assert_allclose(res.rollout[cam.name], ref, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(
            res.attention[cam.name],
            cross[0].mean(axis=0)[cam.start : cam.stop].reshape(cam.height, cam.width),
            rtol=1e-5,
            atol=1e-8,
        )


def test_one_action_step_selects_that_rows_attention(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(action_step=2))
    mean_engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(5))
    a, b = engine.step(obs), mean_engine.step(obs)
    name = engine.camera_names[0]
    assert not np.allclose(a.attention[name], b.attention[name])
    assert np.array_equal(a.action, b.action)


def test_backbone_runs_once_per_camera_per_forward(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    calls = []
    handle = engine.policy.model.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    rng = np.random.default_rng(3)
    for t in range(4):
        engine.step(random_observation(engine, rng, t))
    engine.step_batch([random_observation(engine, rng) for _ in range(5)])
    handle.remove()
    assert len(calls) == 2 * 4 + 2  # two cameras; a batch is one forward


def test_batched_results_match_single_steps(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    rng = np.random.default_rng(4)
    observations = [random_observation(engine, rng, t) for t in range(4)]
    batch = engine.step_batch(observations)
    for obs, res in zip(observations, batch):
        single = engine.step_batch([obs])[0]
        np.testing.assert_allclose(res.action_chunk, single.action_chunk, rtol=1e-4, atol=1e-4)
        for name in engine.camera_names:
            np.testing.assert_allclose(res.attention[name], single.attention[name], rtol=1e-3, atol=1e-6)
        assert res.timestamp == obs.timestamp


def test_images_at_another_size_are_resized_to_the_training_size(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(6))
    big = Observation(
        images={k: np.kron(v, np.ones((2, 2, 1), np.uint8)) for k, v in obs.images.items()}, state=obs.state
    )
    a, b = engine.step_batch([obs])[0], engine.step_batch([big])[0]
    for name in engine.camera_names:
        assert a.attention[name].shape == b.attention[name].shape
    np.testing.assert_allclose(a.action_chunk, b.action_chunk, rtol=1e-5, atol=1e-5)


def test_short_camera_names_are_accepted(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(7))
    short = Observation(images={k.rsplit(".", 1)[-1]: v for k, v in obs.images.items()}, state=obs.state)
    np.testing.assert_array_equal(engine.step_batch([obs])[0].action_chunk, engine.step_batch([short])[0].action_chunk)


def test_bad_inputs_raise_errors_that_name_the_input(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(resize_images=False))
    good = random_observation(engine, np.random.default_rng(8))
    front, wrist = "observation.images.front", "observation.images.wrist"

    with pytest.raises(InputError, match=r"'observation.images.wrist'.*expects cameras"):
        engine.step(Observation(images={front: good.images[front]}, state=good.state))
    with pytest.raises(InputError, match=r"'observation.images.front': expected image size 96x128.*got 100x128"):
        engine.step(Observation(images={**good.images, front: np.zeros((100, 128, 3), np.uint8)}, state=good.state))
    with pytest.raises(InputError, match=r"observation.state: expected a vector of 6 values, got shape \(5,\)"):
        engine.step(Observation(images=good.images, state=np.zeros(5)))
    with pytest.raises(InputError, match=r"observation.state: values must be finite"):
        engine.step(Observation(images=good.images, state=np.array([0, 0, np.nan, 0, 0, 0])))
    with pytest.raises(InputError, match=r"'observation.images.wrist': expected a uint8 RGB image.*shape \(64, 64\)"):
        engine.step(Observation(images={**good.images, wrist: np.zeros((64, 64), np.uint8)}, state=good.state))
    with pytest.raises(InputError, match=r"missing observation.state"):
        engine.step(Observation(images=good.images))
    # The engine is still usable after errors.
    assert engine.step(good).action.shape == (6,)
