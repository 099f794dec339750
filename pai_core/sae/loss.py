"""SAE training losses as plain functions (Gao et al., 2024, sections 2.3 and A.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j values[b, j] * W_dec[indices[b, j]]``: (B, k), (B, k), (n_latents, D) -> (B, D) without the
    dense (B, n_latents) codes. On the CPU ``embedding_bag`` (2-3x faster than the batched product of
    gathered rows at d128/n1024 and d512/n8192, forward and backward); elsewhere the gathered einsum that
    the GPU figures in docs/gpu.md were measured with."""
    if W_dec.device.type == "cpu":
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
    return torch.einsum("bk,bkd->bd", values, W_dec[indices])


def normalized_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over the batch divided by the batch's variance: the fraction of variance
    unexplained (FVU) of this batch. (B, D), (B, D) -> scalar."""
    err = (recon - target).pow(2).sum(-1).mean()
    var = (target - target.mean(0, keepdim=True)).pow(2).sum(-1).mean()
    return err / var.clamp_min(1e-12)


def aux_k_loss(
    pre: torch.Tensor, residual: torch.Tensor, W_dec: torch.Tensor, dead: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """AuxK: reconstruct the main model's residual with the ``aux_k`` most active dead latents, so dead
    latents get gradient and come back to life.

    Args:
        pre: (B, n_latents) non-negative pre-activations (before TopK).
        residual: (B, D) ``x - x̂`` of the main model, detached.
        W_dec: (n_latents, D) decoder.
        dead: (n_latents,) bool, latents counted as dead.
        aux_k: latents used per token (capped at the number of dead latents).
    Returns a scalar: squared error of the residual's reconstruction over the residual's squared norm,
    0 when no latent is dead. Live latents are masked to 0 so they add nothing; no host sync.
    """
    values, indices = pre.masked_fill(~dead, 0.0).topk(min(aux_k, pre.shape[-1]), dim=-1)
    recon = sparse_decode(values, indices, W_dec)
    loss = (recon - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-12)
    return loss * dead.any()
