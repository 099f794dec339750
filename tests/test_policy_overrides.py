"""``--policy-overrides`` change the policy before LeRobot builds it; ``--model-dtype`` runs it in half types."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pai_core import InputError, IntrospectionConfig, Introspector, Observation
from pai_core.policy import load_policy, parse_overrides
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERA = {"observation.images.front": (16, 16)}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    torch.set_num_threads(1)
    return make_act_policy(
        tmp_path_factory.mktemp("ovr") / "policy",
        cameras=CAMERA,
        dim_model=16,
        n_heads=2,
        dim_feedforward=16,
        n_encoder_layers=1,
        chunk_size=4,
        n_action_steps=4,
    )


def observation(rng) -> Observation:
    return Observation(
        images={"front": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}, state=rng.normal(size=6).astype(np.float32)
    )


@pytest.mark.parametrize(
    "overrides",
    [{"temporal_ensemble_coeff": 0.01, "n_action_steps": 1}, {"n_action_steps": 2}],
    ids=["temporal-ensembling", "two-action-steps"],
)
def test_overrides_are_applied_before_the_policy_is_built(tiny_policy, overrides):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    engine = Introspector.from_pretrained(str(tiny_policy), IntrospectionConfig(policy_overrides=overrides))
    for key, value in overrides.items():
        assert getattr(engine.policy.config, key) == value
    assert hasattr(engine.policy, "temporal_ensembler") == ("temporal_ensemble_coeff" in overrides)
    # LeRobot itself, built from the same config: the engine's actions are its select_action's
    cfg = PreTrainedConfig.from_pretrained(str(tiny_policy))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    reference = ACTPolicy.from_pretrained(str(tiny_policy), config=cfg).eval()
    engine.reset()
    reference.reset()
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs = observation(rng)
        with torch.inference_mode():
            expected = engine.loaded.postprocessor(
                reference.select_action(engine.loaded.preprocessor(engine.observation_to_dict(obs)))
            )
        np.testing.assert_allclose(engine.step(obs).action, expected.numpy()[0], rtol=1e-5, atol=1e-6)


def test_an_unknown_override_key_is_an_error_naming_the_key(tmp_path, tiny_policy, capsys):
    from pai_core.cli import main

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/o", cameras=CAMERA, episodes=1, frames=2)
    rc = main(
        [
            "replay",
            "--dataset-repo-id",
            "pai/o",
            "--root",
            str(tmp_path / "ds"),
            "--episode-id",  # the deprecated spelling of --episodes, kept here to prove the alias runs
            "0",
            "--policy-path",
            str(tiny_policy),
            "--output-dir",
            str(tmp_path / "out"),
            "--policy-overrides",
            "tempral_ensemble_coeff=0.01",
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 1 and "--policy-overrides tempral_ensemble_coeff: ACTConfig has no field 'tempral_ensemble_coeff'" in err
    )
    assert "temporal_ensemble_coeff" in err.split("fields:")[1]  # the right spelling is listed
    assert not (tmp_path / "out").exists()  # refused before any work


def test_overrides_the_config_refuses_are_errors_that_say_why(tiny_policy):
    cases = [
        ({"temporal_ensemble_coeff": 0.01}, "`n_action_steps` must be 1 when using temporal ensembling"),
        ({"n_action_steps": "two"}, 'n_action_steps="two": expected a value of type int'),
        ({"n_action_steps": 9}, "chunk size is the upper bound"),
        ({"device": "cuda"}, "device: this field cannot be overridden .*use --device"),
    ]
    for overrides, message in cases:
        with pytest.raises(InputError, match=message):
            load_policy(str(tiny_policy), overrides=overrides)
    assert parse_overrides(["temporal_ensemble_coeff=0.01", "n_action_steps=1", "feedforward_activation=gelu"]) == {
        "temporal_ensemble_coeff": 0.01,
        "n_action_steps": 1,
        "feedforward_activation": "gelu",
    }
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_overrides(["temporal_ensemble_coeff"])


def test_model_dtype_runs_the_policy_in_that_dtype_with_float32_actions(tiny_policy):
    rng = np.random.default_rng(1)
    obs = [observation(rng) for _ in range(3)]
    reference = Introspector.from_pretrained(str(tiny_policy))
    expected = reference.step_batch(obs)
    for dtype, tol in (("bfloat16", 0.1), ("float16", 0.02)):
        engine = Introspector.from_pretrained(str(tiny_policy), IntrospectionConfig(model_dtype=dtype))
        assert next(engine.policy.parameters()).dtype == getattr(torch, dtype)
        got = engine.step_batch(obs)
        for g, e in zip(got, expected):
            assert g.action_chunk.dtype == np.float32 and g.tokens.dtype == getattr(torch, dtype)
            np.testing.assert_allclose(g.action_chunk, e.action_chunk, atol=tol * np.abs(e.action_chunk).max())
        assert engine.fingerprint == reference.fingerprint  # SAE and OOD files made for the policy still fit
    with pytest.raises(InputError, match=r"model dtype 'float8' is not one of \['float32', 'bfloat16', 'float16'\]"):
        load_policy(str(tiny_policy), model_dtype="float8")  # type: ignore[arg-type]


def test_replay_with_model_dtype_bfloat16_gives_the_float32_replay_s_actions(tmp_path, tiny_policy):
    from pai_core.cli import main

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/o", cameras=CAMERA, episodes=1, frames=3)
    tables = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert (
            main(
                [
                    "replay",
                    "--dataset-repo-id",
                    "pai/o",
                    "--root",
                    str(tmp_path / "ds"),
                    "--episodes",
                    "0",
                    "--policy-path",
                    str(tiny_policy),
                    "--output-dir",
                    str(out),
                    "--no-mcap",
                    "--no-video",
                    "--no-progress",
                    "--model-dtype",
                    dtype,
                ]
            )
            == 0
        )
        tables[dtype] = np.stack(pq.read_table(out / "attention.parquet").to_pandas()["action"].to_list())
    np.testing.assert_allclose(tables["bfloat16"], tables["float32"], atol=0.1 * np.abs(tables["float32"]).max())
