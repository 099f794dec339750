"""Attention maps from captured attention weights: pure tensor functions, batched, on any device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .layout import TokenLayout


def decoder_relevance(cross_attention: torch.Tensor, action_step: int | None = None) -> torch.Tensor:
    """Attention of the action queries over encoder tokens.

    Args:
        cross_attention: (B, T, S) decoder cross-attention weights, heads averaged (rows sum to 1).
        action_step: None for the mean over the T action steps of the chunk, else that one step.
    Returns:
        (B, S) attention mass per encoder token; each row sums to 1.
    """
    if action_step is None:
        return cross_attention.mean(dim=1)
    steps = cross_attention.shape[1]
    if not -steps <= action_step < steps:
        raise ValueError(f"action_step={action_step} is outside the chunk of {steps} action steps")
    return cross_attention[:, action_step]


def attention_rollout(relevance: torch.Tensor, encoder_attention: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020) of ``relevance`` back through the encoder layers.

    Rollout of layers 1..L is ``R = Â_L ... Â_1`` with ``Â = (A + I) / 2``; the relevance of the
    encoder's input tokens is ``relevance @ R``. Softmax rows of ``A`` sum to 1, so ``Â`` needs no
    renormalisation and ``r @ Â = (r @ A + r) / 2``: one vector-matrix product per layer, O(L S^2)
    instead of the O(L S^3) of forming R.

    Args:
        relevance: (B, S) attention mass on the encoder's output tokens (from ``decoder_relevance``).
        encoder_attention: L tensors (B, S, S), encoder self-attention per layer, first layer first.
    Returns:
        (B, S) relevance of the encoder's input tokens; rows sum to 1.
    """
    r = relevance.unsqueeze(1)
    for attn in reversed(encoder_attention):
        r = 0.5 * (torch.bmm(r, attn) + r)
    return r.squeeze(1)


def split_by_camera(token_mass: torch.Tensor, layout: TokenLayout) -> dict[str, torch.Tensor]:
    """Per-camera 2-D maps from per-token mass: (B, S) -> {camera: (B, h, w)}."""
    return {cam.name: token_mass[:, cam.start : cam.stop].reshape(-1, cam.height, cam.width) for cam in layout.cameras}


def normalize_maps(
    maps: dict[str, np.ndarray], mode: Literal["global", "per_camera"] = "global"
) -> dict[str, np.ndarray]:
    """Scale maps to [0, 1]: by the largest value over all cameras (comparable across cameras, as the
    seed did) or by each camera's own maximum (shows structure in a camera that gets little attention)."""
    if mode not in ("global", "per_camera"):
        raise ValueError(f"normalize={mode!r} is not one of 'global', 'per_camera'")
    if mode == "global":
        peak = max((float(m.max()) for m in maps.values()), default=0.0)
        return {k: m / peak if peak > 0 else np.zeros_like(m) for k, m in maps.items()}
    return {k: m / float(m.max()) if m.max() > 0 else np.zeros_like(m) for k, m in maps.items()}
