"""What every policy adapter provides."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch

from ..layout import TokenLayout


@dataclass
class Capture:
    """What one forward pass computed, captured by hooks (tensors stay on the model's device).

    Args:
        layout: where each encoder token comes from.
        encoder_attention: per encoder layer (B, S, S) self-attention, heads averaged, first layer first.
        cross_attention: (B, T, S) attention of the T action queries over encoder tokens (last decoder layer).
        tokens: (B, S, D) encoder output tokens of the configured layer.
        input_tokens: (B, S, D) encoder input tokens (before the first LayerNorm; for the kNN OOD score).
        vision_features: camera -> the vision backbone's (B, C, h, w) feature maps, finest first, when
            the adapter was asked to keep them (for the ``patch_knn`` OOD score).
    """

    layout: TokenLayout
    encoder_attention: list[torch.Tensor]
    cross_attention: torch.Tensor
    tokens: torch.Tensor
    input_tokens: torch.Tensor | None = None
    vision_features: dict[str, list[torch.Tensor]] | None = None


class PolicyAdapter(Protocol):
    """Runs the policy's model once and returns ``(actions (B, T, A) normalised, Capture)``."""

    keep_vision_features: bool  # also capture the backbone's feature maps (``Capture.vision_features``)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Capture]: ...

    def graph_safe(self, device: torch.device | str) -> AbstractContextManager:
        """A context inside which ``forward`` can be captured as a CUDA graph (``graph_safe.DeviceFactories``
        for ACT); the policy's own code is never forked for it."""
        ...

    def remove_hooks(self) -> None: ...
