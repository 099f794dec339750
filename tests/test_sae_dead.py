"""Dead latents: the AuxK window scales with the run, AuxK engages when latents die, the usage floor keeps
latents firing on held-out episodes, and training and held-out dead fractions are counted over the same
window of tokens (real ACT tokens of the OOD world)."""

from __future__ import annotations

import json

import pytest
import torch

from pai_core.activations import ActivationStore, token_batches
from pai_core.sae import SAEConfig, SparseAutoencoder, TrainConfig, evaluate_sae, load_sae, save_sae, train_sae


def small_config(**overrides) -> TrainConfig:
    args = {"expansion_factor": 4, "k": 8, "aux_k": 32, "steps": 300, "batch_size": 256, "checkpoint_every": 0}
    return TrainConfig(**(args | overrides))


@pytest.fixture(scope="module")
def tokens(ood_world):
    """The OOD world's recorded tokens (6 episodes x 20 frames x 14 tokens, width 64), split by episode."""
    store = ActivationStore(ood_world[0] / "acts")
    train, held = store.split(0.34, seed=0)
    return store, train, held


def run(tokens, out, **overrides):
    store, train, held = tokens
    torch.manual_seed(0)
    return train_sae(
        token_batches(train, 256, seed=0, repeat=True),
        store.d_model,
        out,
        small_config(**overrides),
        held_out=lambda: token_batches(held, 512, shuffle=False),
        progress=False,
    )


def test_the_default_dead_window_is_a_tenth_of_the_run_capped_at_ten_million_tokens():
    assert TrainConfig(steps=1500, batch_size=1024).dead_window == 153_600  # the demo's run: 1.5 M tokens
    assert TrainConfig(steps=100_000, batch_size=4096).dead_window == 10_000_000
    assert TrainConfig(steps=2, batch_size=64).dead_window == 64  # never shorter than one batch
    assert TrainConfig(steps=1500, batch_size=1024, dead_tokens=5000).dead_window == 5000
    assert TrainConfig(steps=1500, batch_size=1024).sae_config(64).dead_tokens == 153_600
    with pytest.raises(ValueError, match="dead_tokens=0 must be >= 1"):
        TrainConfig(dead_tokens=0)


def test_auxk_engages_with_the_scaled_window_where_the_old_fixed_window_never_did(tokens, tmp_path):
    scaled = run(tokens, tmp_path / "scaled", min_usage=0.0).metrics  # AuxK alone
    fixed = run(tokens, tmp_path / "fixed", min_usage=0.0, dead_tokens=1_000_000).metrics  # > the run's 76,800
    assert scaled["dead_latents"]["auxk_window_tokens"] == 7680
    assert fixed["dead_latents"]["auxk_active_steps"] == 0 and all(h["aux"] == 0 for h in fixed["history"])
    assert scaled["dead_latents"]["auxk_active_steps"] > 100 and any(h["aux"] > 0 for h in scaled["history"])


def test_the_usage_floor_keeps_latents_firing_on_held_out_episodes_at_the_same_fvu(tokens, tmp_path):
    before = run(tokens, tmp_path / "before", min_usage=0.0, dead_tokens=1_000_000).metrics  # the old training
    after = run(tokens, tmp_path / "after").metrics  # defaults: scaled window, usage floor 0.5
    # measured over the 560 held-out tokens: 17 % -> 0 % held-out, 25 % -> 0 % training, FVU 0.038 -> 0.034
    assert after["dead_latents"]["held_out"] < 0.5 * before["dead_latents"]["held_out"], (before, after)
    assert after["dead_latents"]["training"] < 0.5 * before["dead_latents"]["training"]
    assert after["held_out"]["fvu"] < 1.1 * before["held_out"]["fvu"]
    assert after["held_out"]["mean_l0"] == 8 == after["held_out"]["max_l0"]  # still exactly k per token
    bias = load_sae(tmp_path / "after").selection_bias
    assert (bias >= 0).all() and 0 < int((bias > 0).sum()) < bias.numel()  # only rarely chosen latents


def test_the_selection_bias_only_chooses_latents_and_moves_towards_the_usage_floor():
    sae = SparseAutoencoder(SAEConfig(d_in=4, expansion_factor=1, k=2, min_usage=0.5, usage_bias_rate=0.1))
    assert not sae.selection_bias.any()  # a new SAE chooses by TopK alone
    pre = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    sae.selection_bias.copy_(torch.tensor([0.0, 0.0, 2.5, 9.0]))
    values, indices = sae.select(pre)
    assert indices.tolist() == [[2, 0]] and values.tolist() == [[1.0, 3.0]]  # 1 + 2.5 beats 3; 0 never chosen
    # 8 tokens, k = 2 of 4 latents: uniform is 4 per latent, the floor 2
    sae.selection_bias.zero_()
    sae.update_selection_bias_(torch.tensor([0.0, 1.0, 2.0, 13.0]), 8, torch.tensor(2.0))
    assert sae.selection_bias.tolist() == pytest.approx([0.2, 0.2, 0.0, 0.0])  # raised below the floor only
    sae.update_selection_bias_(torch.tensor([0.0, 5.0, 0.0, 3.0]), 8, torch.tensor(2.0))
    assert sae.selection_bias.tolist() == pytest.approx([0.4, 0.0, 0.2, 0.0])  # lowered back, never below 0


def test_training_and_held_out_dead_fractions_count_the_same_window(tokens, tmp_path):
    store, _, held = tokens
    result = run(tokens, tmp_path / "sae")
    dead, held_metrics = result.metrics["dead_latents"], result.metrics["held_out"]
    n_held = store.count_tokens(held)
    assert dead["window_tokens"] == held_metrics["dead_window_tokens"] == min(7680, n_held)
    assert dead["held_out"] == held_metrics["dead_fraction"]
    since = load_sae(tmp_path / "sae").tokens_since_fired  # saved with the weights
    assert dead["training"] == pytest.approx(float((since >= dead["window_tokens"]).float().mean()))
    saved = json.loads((tmp_path / "sae" / "metrics.json").read_text())["dead_latents"]
    assert saved == dead
    card = (tmp_path / "sae" / "README.md").read_text()
    assert f"{dead['held_out']:.1%} never fire on the first {dead['window_tokens']:,} held-out tokens" in card
    assert f"active at {dead['auxk_active_steps']} of 300 steps" in card
    assert "Usage floor 0.5 x k/n" in card and f"{dead['biased_latents']} latents carry one" in card


def test_held_out_dead_fraction_counts_only_the_first_window_of_tokens():
    """Latent 0 fires on the second half of the tokens only: dead over the first half, alive over all."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=4, expansion_factor=1, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    x = torch.zeros(8, 4)
    x[:4, 1] = 1.0
    x[4:, 0] = 1.0
    half = evaluate_sae(sae, [x[:3], x[3:]], dead_window=4)
    whole = evaluate_sae(sae, [x[:3], x[3:]])
    assert half["dead_window_tokens"] == 4 and whole["dead_window_tokens"] == 8
    assert half["dead_fraction"] == 0.75 and whole["dead_fraction"] == 0.5
    assert half["fvu"] == whole["fvu"]  # the window only concerns the dead count


def test_an_sae_saved_before_the_window_was_renamed_and_the_bias_added_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    original = SparseAutoencoder(SAEConfig(d_in=16, expansion_factor=2, k=4, dead_tokens=1234))
    sae = save_sae(original, tmp_path / "s")
    config = json.loads((sae / "config.json").read_text())
    config["dead_steps"] = config.pop("dead_tokens")  # as train-sae wrote it before
    for name in ("min_usage", "usage_bias_rate"):
        del config[name]
    (sae / "config.json").write_text(json.dumps(config))
    weights = load_file(str(sae / "model.safetensors"))
    del weights["selection_bias"]
    save_file(weights, str(sae / "model.safetensors"))
    loaded = load_sae(sae)
    assert loaded.config.dead_tokens == 1234 and not loaded.selection_bias.any()
    x = torch.randn(5, 16)
    assert torch.equal(loaded.encode(x), original.encode(x))


def test_the_cpu_sparse_decode_matches_the_gathered_product_and_its_gradients():
    from pai_core.sae.loss import sparse_decode

    torch.manual_seed(0)
    W = torch.randn(64, 8, requires_grad=True)
    values, indices = torch.rand(5, 4, requires_grad=True), torch.randint(0, 64, (5, 4))
    ours = sparse_decode(values, indices, W)
    reference = torch.einsum("bk,bkd->bd", values, W[indices])
    torch.testing.assert_close(ours, reference)
    for a, b in zip(
        torch.autograd.grad(ours.pow(2).sum(), (values, W)), torch.autograd.grad(reference.pow(2).sum(), (values, W))
    ):
        torch.testing.assert_close(a, b)


def test_a_usage_floor_outside_zero_to_one_names_the_setting():
    with pytest.raises(ValueError, match="min_usage=1.5 must be within 0..1"):
        TrainConfig(min_usage=1.5)
    with pytest.raises(ValueError, match="usage_bias_rate=-1 must be >= 0"):
        SAEConfig(d_in=4, k=2, usage_bias_rate=-1)


def test_train_sae_takes_the_usage_floor_from_the_command_line(ood_world, tmp_path):
    from pai_core.cli import main

    out = tmp_path / "sae"
    flags = ["--expansion-factor", "4", "--k", "8", "--aux-k", "32", "--steps", "20", "--batch-size", "128"]
    code = main(
        [
            "train-sae",
            "--activations",
            str(ood_world[0] / "acts"),
            "--output-dir",
            str(out),
            *flags,
            "--min-usage",
            "0.25",
        ]
    )
    assert code == 0
    assert json.loads((out / "config.json").read_text())["min_usage"] == 0.25
    assert json.loads((out / "metrics.json").read_text())["training"]["min_usage"] == 0.25
    assert "Usage floor 0.25 x k/n" in (out / "README.md").read_text()
