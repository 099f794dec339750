"""The seed's OOD rule, kept as a baseline to measure pai's detector against.

The seed trained one sparse autoencoder over a whole frame: all S encoder tokens of width D concatenated
into one S*D vector, one ReLU hidden layer, MSE + L1 loss. A frame's score is its reconstruction error
and the threshold is mean + 2.5 sigma of the training frames' scores (no held-out calibration).
pai scores per token with a TopK SAE and a conformal threshold (``pai_core.ood``); this module exists
only so ``bench/ood.py`` can compare the two on the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class WholeFrameSAEConfig:
    """Args:
    n_features: hidden units; 0 means S*D, the seed's size (77 tokens x 512 -> 39,424 features).
    l1_coef: weight of the L1 penalty (mean absolute feature activation; the seed's sparsity term).
    steps: Adam steps.
    batch_size: frames per step.
    lr: Adam learning rate.
    sigma: threshold = mean + sigma * std of the training frames' scores (the seed used 2.5).
    seed: initialisation and batch-order seed.
    """

    n_features: int = 0
    l1_coef: float = 1e-3
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    sigma: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_features < 0 or self.l1_coef < 0 or self.lr <= 0 or self.sigma < 0:
            raise ValueError(
                f"n_features={self.n_features}, l1_coef={self.l1_coef}, sigma={self.sigma} must be "
                f">= 0 and lr={self.lr} > 0"
            )


class WholeFrameSAE(nn.Module):
    """f = relu(W_enc (x - b_dec) + b_enc), x_hat = W_dec f + b_dec, with x the (B, S*D) flattened frame.

    Buffers ``threshold``, ``mean_score`` and ``std_score`` hold the seed's mean + sigma * std rule.
    """

    def __init__(self, n_tokens: int, d_model: int, n_features: int = 0):
        super().__init__()
        self.n_tokens, self.d_model = n_tokens, d_model
        d_in = n_tokens * d_model
        n_features = n_features or d_in
        self.encoder = nn.Linear(d_in, n_features)
        self.decoder = nn.Linear(n_features, d_in)
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.register_buffer("mean_score", torch.tensor(0.0))
        self.register_buffer("std_score", torch.tensor(0.0))

    def _flat(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, S*D), checking S and D (a different policy or layer gives other shapes)."""
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (self.n_tokens, self.d_model):
            raise ValueError(
                f"whole-frame SAE expects tokens (B, {self.n_tokens}, {self.d_model}), got {tuple(tokens.shape)}"
            )
        return tokens.reshape(tokens.shape[0], -1).float()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, S, D) -> (x (B, S*D), features (B, F), reconstruction (B, S*D))."""
        x = self._flat(tokens)
        f = torch.relu(self.encoder(x - self.decoder.bias))
        return x, f, self.decoder(f)

    @torch.no_grad()
    def score(self, tokens: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(B, S, D) -> (B,) reconstruction MSE per frame (mean over all S*D values)."""
        out = []
        for b in range(0, tokens.shape[0], batch_size):
            x, _, x_hat = self(tokens[b : b + batch_size])
            out.append(((x_hat - x) ** 2).mean(dim=1).cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)


def train_whole_frame_sae(
    tokens: torch.Tensor, config: WholeFrameSAEConfig | None = None
) -> tuple[WholeFrameSAE, dict]:
    """Fit the seed's whole-frame SAE on clean training frames (N, S, D) and set its threshold from the
    same frames' scores. Returns the model and a summary (losses, score mean/std, threshold)."""
    cfg = config or WholeFrameSAEConfig()
    if tokens.ndim != 3 or tokens.shape[0] < 2:
        raise ValueError(f"training the whole-frame SAE needs tokens (N >= 2, S, D), got {tuple(tokens.shape)}")
    tokens = tokens.float()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = WholeFrameSAE(tokens.shape[1], tokens.shape[2], cfg.n_features)
    with torch.no_grad():
        model.decoder.bias.copy_(tokens.reshape(tokens.shape[0], -1).mean(0))  # centre on the training mean
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(tokens.shape[0], (min(cfg.batch_size, tokens.shape[0]),), generator=gen)
        x, f, x_hat = model(tokens[idx])
        mse = ((x_hat - x) ** 2).mean()
        loss = mse + cfg.l1_coef * f.abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(mse.item())
    model.eval()
    scores = model.score(tokens)
    mean, std = float(scores.mean()), float(scores.std())
    model.mean_score.fill_(mean)
    model.std_score.fill_(std)
    model.threshold.fill_(mean + cfg.sigma * std)
    return model, {
        "frames": int(tokens.shape[0]),
        "inputs": int(tokens.shape[1] * tokens.shape[2]),
        "features": int(model.encoder.out_features),
        "steps": cfg.steps,
        "l1_coef": cfg.l1_coef,
        "first_mse": losses[0],
        "final_mse": float(np.mean(losses[-max(1, cfg.steps // 20) :])),
        "train_score_mean": mean,
        "train_score_std": std,
        "sigma": cfg.sigma,
        "threshold": float(model.threshold),
    }


__all__ = ["WholeFrameSAE", "WholeFrameSAEConfig", "train_whole_frame_sae"]
