"""Training a TopK SAE on tokens recorded from a real ACT over a real LeRobot dataset."""

from __future__ import annotations

import json

import pytest
import torch

from pai_core import InputError, ModelError
from pai_core.activations import ActivationStore, token_batches
from pai_core.cli import main
from pai_core.pipeline import Pipeline
from pai_core.sae import SAEConfig, SparseAutoencoder, TrainConfig, evaluate_sae, load_sae, save_sae, train_sae
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERA = {"observation.images.front": (96, 128)}
K = 8
FVU_BOUND = 0.15  # on training tokens after 300 steps; measured 0.03-0.04


def small_config(**overrides) -> TrainConfig:
    args = dict(
        expansion_factor=4, k=K, aux_k=32, dead_tokens=5000, steps=300, batch_size=256, lr=1e-3, checkpoint_every=100
    )
    args.update(overrides)
    return TrainConfig(**args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`pai train-sae` recording first from a 4-episode dataset, then 300 steps."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("sae")
    make_lerobot_dataset(base / "ds", cameras=CAMERA, episodes=4, frames=16)
    policy = make_act_policy(base / "policy", cameras=CAMERA)
    out = base / "sae"
    code = main(
        [
            "train-sae",
            "--dataset-repo-id",
            "pai/synthetic",
            "--root",
            str(base / "ds"),
            "--policy-path",
            str(policy),
            "--output-dir",
            str(out),
            "--expansion-factor",
            "4",
            "--k",
            str(K),
            "--aux-k",
            "32",
            "--dead-tokens",
            "5000",
            "--min-usage",
            "0",  # AuxK alone, so some latents stay silent (tests/test_sae_dead.py trains with the floor)
            "--steps",
            "300",
            "--batch-size",
            "256",
            "--shard-frames",
            "8",
            "--val-fraction",
            "0.25",
        ]
    )
    assert code == 0
    return base, policy, out


def test_training_brings_fvu_on_training_tokens_below_the_bound_with_exactly_k_active_latents(trained):
    _, _, out = trained
    sae = load_sae(out)
    store = ActivationStore(out / "activations")
    train_eps = set(sae.config.extra["train_episodes"])
    train = [s for s in store.shards if store.shard_episode(s) in train_eps]
    after = evaluate_sae(sae, token_batches(train, 512, shuffle=False))
    untrained = SparseAutoencoder(sae.config)
    untrained.b_pre.data.copy_(sae.b_pre)  # same mean centring, untrained directions
    before = evaluate_sae(untrained, token_batches(train, 512, shuffle=False))
    assert after["fvu"] < FVU_BOUND < before["fvu"]
    assert after["mean_l0"] == K and after["max_l0"] == K
    assert after["nan_tokens"] == 0 and after["n_tokens"] == 3 * 16 * 14
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_sae_directory_holds_weights_config_held_out_metrics_and_a_model_card(trained):
    _, policy, out = trained
    config = json.loads((out / "config.json").read_text())
    assert (config["d_in"], config["k"], config["expansion_factor"], config["policy"]) == (64, K, 4, str(policy))
    assert config["extra"]["held_out_episodes"] and not set(config["extra"]["held_out_episodes"]) & set(
        config["extra"]["train_episodes"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    held = metrics["held_out"]
    assert held["n_tokens"] == 16 * 14 and held["mean_l0"] == K and 0 <= held["dead_fraction"] < 1
    assert 0 < held["fvu"] < 0.5 and metrics["steps"] == 300 and metrics["tokens_per_s"] > 0
    card = (out / "README.md").read_text()
    assert f"k = {K}" in card and f"{held['fvu']:.4g}" in card


def test_saved_sae_reloads_to_the_same_codes_and_reconstructions(trained, tmp_path):
    _, _, out = trained
    sae = load_sae(out)
    x = ActivationStore(out / "activations").load_tokens()[:200]
    recon, codes = sae(x)
    again = load_sae(save_sae(sae, tmp_path / "copy"))
    recon2, codes2 = again(x)
    assert torch.equal(recon, recon2) and torch.equal(codes, codes2)
    assert torch.equal(again.tokens_since_fired, sae.tokens_since_fired) and sae.tokens_since_fired.max() > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    from_ckpt = SparseAutoencoder(SAEConfig(**ckpt["sae_config"]))
    from_ckpt.load_state_dict(ckpt["model"])
    assert torch.equal(from_ckpt(x)[0], recon)


def test_resumed_training_continues_to_the_same_weights_as_an_uninterrupted_run(trained, tmp_path):
    store = ActivationStore(trained[2] / "activations")
    stream = lambda: token_batches(store.shards, 128, seed=1, repeat=True)  # noqa: E731
    straight = train_sae(
        stream(), 64, tmp_path / "straight", small_config(steps=40, checkpoint_every=20), progress=False
    ).sae
    train_sae(stream(), 64, tmp_path / "resumed", small_config(steps=20, checkpoint_every=20), progress=False)
    resumed = train_sae(
        stream(), 64, tmp_path / "resumed", small_config(steps=40, checkpoint_every=20), resume=True, progress=False
    )
    assert resumed.metrics["steps"] == 40 and resumed.metrics["tokens_this_run"] == 20 * 128
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ModelError, match="k=8 but this run asks for 4"):
        train_sae(stream(), 64, tmp_path / "resumed", small_config(steps=60, k=4), resume=True, progress=False)
    with pytest.raises(InputError, match="pass --resume"):
        train_sae(stream(), 64, tmp_path / "resumed", small_config(steps=60), progress=False)


def test_aux_loss_revives_latents_that_never_win_the_top_k(trained):
    """Latents whose encoder columns are shrunk never make the TopK, so the main loss gives them no
    gradient; only AuxK can bring them back."""
    from pai_core.sae.train import training_step

    store = ActivationStore(trained[2] / "activations")
    x = store.load_tokens()
    revived = {}
    for coef in (0.0, 1.0 / 32):
        torch.manual_seed(0)
        sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=4, k=K, aux_k=32, dead_tokens=1024))
        with torch.no_grad():
            sae.b_pre.copy_(x.mean(0))
            sae.W_enc[:, :128] *= 0.05
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        stream = token_batches(store.shards, 256, seed=0, repeat=True)
        for _ in range(200):
            training_step(sae, optimizer, next(stream), coef)
        with torch.no_grad():
            revived[coef] = int((sae.encode(x)[:, :128] > 0).any(0).sum())
    assert revived[0.0] == 0 and revived[1.0 / 32] >= 2, revived


def test_the_sparse_decode_inference_uses_equals_the_dense_decode_of_the_codes(trained):
    from pai_core.features import FeatureExtractor

    _, _, out = trained
    sae = load_sae(out)
    x = ActivationStore(out / "activations").load_tokens()[:200].reshape(8, 25, -1)
    with torch.no_grad():
        recon, codes = sae(x)
        values, indices = sae.select(sae.pre_activation(x))
        sparse = sae.decode_sparse(values, indices)
    assert sparse.shape == recon.shape and torch.allclose(sparse, recon, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sparse, torch.zeros_like(sparse) + sae.b_pre)  # the rows do contribute
    features = FeatureExtractor(sae)(x)
    assert torch.equal(features.codes, codes)
    expected = (recon - x).pow(2).mean(dim=-1).numpy()
    assert features.token_error.shape == expected.shape
    assert abs(features.token_error - expected).max() <= 1e-5 * max(1.0, float(expected.max()))


def test_sae_whose_width_does_not_match_the_policy_gives_a_clear_model_error(trained, tmp_path, capsys):
    _, policy, _ = trained
    narrow = save_sae(SparseAutoencoder(SAEConfig(d_in=32, expansion_factor=2, k=4)), tmp_path / "narrow")
    with pytest.raises(ModelError, match="SAE expects tokens of width 32 but .* has dim_model 64"):
        Pipeline.load(str(policy), str(narrow))
    code = main(
        [
            "calibrate-ood",
            "--sae-path",
            str(narrow),
            "--policy-path",
            str(policy),
            "--dataset-repo-id",
            "pai/synthetic",
            "--root",
            str(trained[0] / "ds"),
        ]
    )
    assert code == 1 and "width 32" in capsys.readouterr().err


def test_train_sae_without_a_token_source_or_with_upload_but_no_repo_names_the_missing_flag(tmp_path, capsys):
    assert main(["train-sae", "--output-dir", str(tmp_path)]) == 1
    assert "--activations DIR or --dataset-repo-id" in capsys.readouterr().err
    assert main(["train-sae", "--activations", str(tmp_path), "--output-dir", str(tmp_path), "--upload-to-hub"]) == 1
    assert "--hub-repo-id" in capsys.readouterr().err
