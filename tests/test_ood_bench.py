"""The seed's whole-frame SAE baseline used by bench/ood.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines import WholeFrameSAEConfig, train_whole_frame_sae  # noqa: E402


def _frames(n: int, shift: float, seed: int) -> torch.Tensor:
    """(n, 6, 8) tokens on a low-rank structure (what a trained encoder's tokens look like), plus noise;
    ``shift`` moves every token off that structure."""
    gen = torch.Generator().manual_seed(99)
    basis = torch.randn(4, 6 * 8, generator=gen)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) @ basis + 0.05 * torch.randn(n, 6 * 8, generator=g)
    return (x + shift * torch.randn(1, 6 * 8, generator=g)).reshape(n, 6, 8)


def test_whole_frame_sae_scores_unseen_clean_frames_lower_than_shifted_frames():
    torch.set_num_threads(1)
    model, info = train_whole_frame_sae(_frames(256, 0.0, 1), WholeFrameSAEConfig(steps=400, batch_size=64, lr=3e-3))
    clean, shifted = model.score(_frames(64, 0.0, 2)), model.score(_frames(64, 1.0, 3))
    assert info["final_mse"] < info["first_mse"] / 2
    assert info["features"] == 6 * 8  # the seed's size: as many features as inputs
    assert np.median(shifted) > 5 * np.median(clean)
    assert np.mean(shifted > info["threshold"]) > 0.9
    assert np.mean(clean > info["threshold"]) < 0.1


def test_whole_frame_sae_threshold_is_mean_plus_sigma_std_of_training_scores():
    train = _frames(128, 0.0, 4)
    model, info = train_whole_frame_sae(train, WholeFrameSAEConfig(steps=50, sigma=2.5))
    scores = model.score(train)
    assert info["threshold"] == pytest.approx(scores.mean() + 2.5 * scores.std(), rel=1e-5)
    assert float(model.threshold) == pytest.approx(info["threshold"], rel=1e-6)


def test_whole_frame_sae_rejects_tokens_of_another_shape():
    model, _ = train_whole_frame_sae(_frames(16, 0.0, 5), WholeFrameSAEConfig(steps=2))
    with pytest.raises(ValueError, match=r"expects tokens \(B, 6, 8\)"):
        model.score(torch.zeros(2, 7, 8))
