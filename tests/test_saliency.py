"""Integrated gradients on a tiny real ACT: against finite differences, completeness, the policy's own
output, and ``pai replay --saliency ig`` (a video per camera, the side-by-side video, saliency.parquet)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pai_core import InputError, IntrospectionConfig, Introspector, Observation
from pai_core.policy import cast_policy
from pai_core.saliency import IntegratedGradients, SaliencyConfig, normalise
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERAS = {"observation.images.front": (16, 24), "observation.images.wrist": (8, 8)}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """Two cameras of different sizes, 6-D state, chunk 4: a real ACT small enough for many backward passes."""
    torch.set_num_threads(1)
    return make_act_policy(
        tmp_path_factory.mktemp("ig") / "policy",
        cameras=CAMERAS,
        dim_model=16,
        n_heads=2,
        dim_feedforward=16,
        n_encoder_layers=1,
        chunk_size=4,
        n_action_steps=4,
    )


@pytest.fixture(scope="module")
def engine64(tiny_policy):
    """The policy in float64, so finite differences with a tiny step are exact to many digits."""
    engine = Introspector.from_pretrained(str(tiny_policy))
    cast_policy(engine.loaded, "float64")
    return engine


def observations(n: int, seed: int = 0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [
        Observation(
            images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()},
            state=rng.normal(size=6).astype(np.float32),
            timestamp=0.1 * i,
            frame_index=i,
        )
        for i in range(n)
    ]


def finite_difference_attribution(ig: IntegratedGradients, obs: Observation, key: str, index: tuple, h: float = 1e-6):
    """(x_i - 0) * mean over the midpoint path points of the central difference of f in coordinate i."""
    x = {k: v.double()[None] for k, v in ig.engine.observation_to_dict(obs).items()}
    steps = ig.config.steps
    total = 0.0
    with torch.no_grad():
        for k in range(steps):
            a = (k + 0.5) / steps
            plus = {name: a * v for name, v in x.items()}
            minus = {name: v.clone() for name, v in plus.items()}
            plus[key][(0, *index)] += h
            minus[key][(0, *index)] -= h
            total += float(ig._forward(plus) - ig._forward(minus)) / (2 * h)
    return float(x[key][(0, *index)]) * total / steps


@pytest.mark.parametrize(
    "config",
    [
        SaliencyConfig(steps=4, batch_size=3, action_step=1, action_dim=2),
        SaliencyConfig(steps=3, batch_size=5, aggregation="norm"),
    ],
    ids=["sum-step-dim", "norm"],
)
def test_integrated_gradients_match_a_finite_difference_reference(engine64, config):
    obs = observations(2)
    results = IntegratedGradients(engine64, config).attribute(obs)  # batches straddle the two frames
    ig = IntegratedGradients(engine64, config)
    checked = [
        ("observation.images.front", (0, 3, 5)),
        ("observation.images.front", (2, 15, 23)),
        ("observation.images.wrist", (1, 4, 2)),
        *(("observation.state", (j,)) for j in range(6)),
    ]
    for frame in (0, 1):
        for key, index in checked:
            reference = finite_difference_attribution(ig, obs[frame], key, index)
            got = float(results[frame].attribution[key][index])
            assert got == pytest.approx(reference, rel=1e-5, abs=1e-9), (frame, key, index)


def test_batching_does_not_change_the_attributions(engine64):
    obs = observations(3, seed=1)
    one = IntegratedGradients(engine64, SaliencyConfig(steps=3, batch_size=1)).attribute(obs)
    many = IntegratedGradients(engine64, SaliencyConfig(steps=3, batch_size=9)).attribute(obs)
    for a, b in zip(one, many):
        for key in a.attribution:
            np.testing.assert_allclose(a.attribution[key], b.attribution[key], rtol=1e-9, atol=1e-12)


def test_attributions_add_up_to_the_change_in_the_action_with_enough_steps(engine64):
    """ReLU networks have gradients that jump along the path, so the quadrature error falls only about as
    1/steps (measured on one frame: 25 % of the change at 8 steps, 4 % at 32, 2 % at 128)."""
    obs = observations(2, seed=2)
    coarse = IntegratedGradients(engine64, SaliencyConfig(steps=4, batch_size=64)).attribute(obs)
    fine = IntegratedGradients(engine64, SaliencyConfig(steps=128, batch_size=128)).attribute(obs)
    for f in fine:
        change = f.target - f.baseline_target
        total = sum(float(v.sum()) for v in f.attribution.values())
        assert total - change == pytest.approx(f.completeness_gap, abs=1e-9)
        scale = abs(f.target) + abs(f.baseline_target)  # a change near 0 is held to the outputs' own size
        assert total == pytest.approx(change, rel=0.05, abs=0.01 * scale), (f.completeness_gap, change)
        assert sum(f.shares.values()) == pytest.approx(1.0)
    assert sum(abs(f.completeness_gap) for f in fine) < 0.5 * sum(abs(c.completeness_gap) for c in coarse)


def test_the_target_is_the_policy_s_own_normalised_action_chunk(tiny_policy):
    engine = Introspector.from_pretrained(str(tiny_policy))
    obs = observations(2, seed=3)
    results = IntegratedGradients(engine, SaliencyConfig(steps=1, action_step=2)).attribute(obs)
    batch = engine.loaded.preprocessor(
        {k: torch.stack([engine.observation_to_dict(o)[k] for o in obs]) for k in engine.observation_to_dict(obs[0])}
    )
    with torch.no_grad():
        chunk = engine.policy.predict_action_chunk(batch)  # LeRobot's own normalised (B, T, A) chunk
    for i, r in enumerate(results):
        assert r.target == pytest.approx(float(chunk[i, 2].sum()), rel=1e-5, abs=1e-6)
    maps = results[0].maps
    assert maps["observation.images.front"].shape == (16, 24) and maps["observation.images.wrist"].shape == (8, 8)
    assert results[0].attribution["observation.state"].shape == (6,)


def test_a_bfloat16_policy_gives_attributions_near_float32(tiny_policy):
    obs = observations(1, seed=4)
    cfg = SaliencyConfig(steps=4)
    f32 = IntegratedGradients.from_pretrained(str(tiny_policy), cfg).attribute(obs)[0]
    bf16 = IntegratedGradients.from_pretrained(str(tiny_policy), cfg, IntrospectionConfig(model_dtype="bfloat16"))
    b = bf16.attribute(obs)[0]
    assert b.attribution["observation.state"].dtype == np.float32
    np.testing.assert_allclose(
        b.attribution["observation.state"],
        f32.attribution["observation.state"],
        atol=0.1 * np.abs(f32.attribution["observation.state"]).max(),
    )


def test_an_action_index_outside_the_chunk_is_an_error_naming_it(tiny_policy):
    engine = Introspector.from_pretrained(str(tiny_policy))
    with pytest.raises(InputError, match=r"action_step=4 but the policy has 4 chunk steps"):
        IntegratedGradients(engine, SaliencyConfig(action_step=4))
    with pytest.raises(InputError, match=r"action_dim=6 but the policy has 6 action dimensions"):
        IntegratedGradients(engine, SaliencyConfig(action_dim=6))
    with pytest.raises(ValueError, match=r"aggregation='mean' is not one of \['sum', 'norm'\]"):
        SaliencyConfig(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"percentile=0 must be within"):
        SaliencyConfig(percentile=0)


def test_normalisation_puts_every_camera_and_the_state_on_one_scale():
    maps = {"a": np.array([[0.0, 1.0], [2.0, 4.0]]), "b": np.array([[8.0]])}
    linear, state = normalise(maps, 2.0, "linear")
    np.testing.assert_allclose(linear["a"], [[0.0, 0.125], [0.25, 0.5]])
    assert linear["b"][0, 0] == 1.0 and state == 0.25
    clipped, state = normalise(maps, 2.0, "percentile", percentile=50.0)  # median of 0,1,2,4,8,2 is 2
    np.testing.assert_allclose(clipped["a"], [[0.0, 0.5], [1.0, 1.0]])
    assert clipped["b"][0, 0] == 1.0 and state == 1.0
    zeros, state = normalise({"a": np.zeros((2, 2))}, 0.0)
    assert not zeros["a"].any() and state == 0.0


def test_replay_with_saliency_ig_writes_a_video_per_camera_the_side_by_side_video_and_a_table(tmp_path, tiny_policy):
    import av

    from pai_core.cli import main

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/ig", cameras=CAMERAS, episodes=2, frames=3)
    out = tmp_path / "out"
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/ig",
                "--root",
                str(tmp_path / "ds"),
                "--episodes",
                "1",
                "--policy-path",
                str(tiny_policy),
                "--output-dir",
                str(out),
                "--no-mcap",
                "--no-progress",
                "--batch-size",
                "2",
                "--saliency",
                "ig",
                "--saliency-steps",
                "2",
                "--saliency-action-dim",
                "5",
                "--saliency-normalisation",
                "linear",
            ]
        )
        == 0
    )

    def frames(name):
        with av.open(str(out / name)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    front, wrist = frames("front_saliency.mp4"), frames("wrist_saliency.mp4")
    assert len(front) == len(wrist) == 3 and front[0].shape == (16, 24, 3) and wrist[0].shape == (8, 8, 3)
    for kind in ("saliency", "attention"):  # every camera in one frame, the wrist scaled to the front's height
        combined = frames(f"side_by_side_{kind}.mp4")
        assert len(combined) == 3 and combined[0].shape == (16, 24 + 16, 3)
    table = pq.read_table(out / "saliency.parquet")
    df = table.to_pandas()
    assert list(df["frame"]) == [0, 1, 2] and set(df["episode"]) == {1}
    np.testing.assert_allclose(
        df["attribution_sum"] - (df["target"] - df["baseline_target"]), df["completeness_gap"], atol=1e-5
    )
    np.testing.assert_allclose(df["share_state"] + df["share_front"] + df["share_wrist"], 1.0, atol=1e-5)
    assert all(len(v) == 6 for v in df["state_attribution"]) and df["state_saliency"].between(0, 1).all()
    meta = json.loads(table.schema.metadata[b"saliency"])
    assert (meta["steps"], meta["action_dim"], meta["normalisation"]) == (2, 5, "linear")
    files = json.loads((out / "summary.json").read_text())["files"]
    assert {"saliency.parquet", "front_saliency.mp4", "side_by_side_saliency.mp4"} <= set(files)


def test_replay_refuses_a_saliency_action_dimension_the_policy_lacks(tmp_path, tiny_policy, capsys):
    from pai_core.cli import main

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/ig", cameras=CAMERAS, episodes=1, frames=2)
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/ig",
                "--root",
                str(tmp_path / "ds"),
                "--episodes",
                "0",
                "--policy-path",
                str(tiny_policy),
                "--output-dir",
                str(tmp_path / "out"),
                "--no-progress",
                "--saliency",
                "ig",
                "--saliency-action-dim",
                "9",
            ]
        )
        == 1
    )
    assert "action_dim=9 but the policy has 6 action dimensions" in capsys.readouterr().err
