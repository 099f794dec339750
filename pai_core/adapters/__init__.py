"""Policy adapters: the only code that knows where a policy keeps its attention and tokens.

An adapter runs one forward pass and returns the normalised action chunk with a ``Capture`` of what the
model computed on the way. Add Pi0 or SmolVLA here beside ACT; sources, sinks and the SAE stay as they are.
"""

from __future__ import annotations

from torch import nn

from .act import ACTAdapter
from .base import Capture, PolicyAdapter


def make_adapter(policy: nn.Module, token_layer: int = -1, keep_vision_features: bool = False) -> PolicyAdapter:
    """The adapter for ``policy`` (by its config type)."""
    kind = getattr(policy.config, "type", None)
    if kind == "act":
        return ACTAdapter(policy, token_layer=token_layer, keep_vision_features=keep_vision_features)
    raise NotImplementedError(f"Policy type {kind!r} is not supported yet; supported: ['act']")


__all__ = ["ACTAdapter", "Capture", "PolicyAdapter", "make_adapter"]
