"""Per-frame SAE outputs from the engine's tokens: feature vector, spatial maps, reconstruction error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attention import split_by_camera
from .errors import ModelError
from .layout import TokenLayout
from .sae import SparseAutoencoder


@dataclass
class FeatureOutput:
    """SAE view of a batch of frames.

    Args:
        features: (B, n_latents) activation per feature, pooled over the frame's tokens.
        token_error: (B, S) squared reconstruction error per token, divided by d_in.
        codes: (B, S, n_latents) sparse codes on the device (for spatial maps of chosen features).
    """

    features: np.ndarray
    token_error: np.ndarray
    codes: torch.Tensor


class FeatureExtractor:
    """Runs the SAE on every token of a frame in one batched call."""

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae.eval()
        self.pooling = sae.config.pooling

    def check_width(self, dim_model: int, policy_name: str = "the policy") -> None:
        if self.sae.config.d_in != dim_model:
            raise ModelError(
                f"SAE expects tokens of width {self.sae.config.d_in} but {policy_name} has dim_model "
                f"{dim_model}; train the SAE on this policy's activations"
            )

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> FeatureOutput:
        """tokens: (B, S, D) encoder tokens on the SAE's device."""
        if tokens.shape[-1] != self.sae.config.d_in:
            raise ModelError(f"SAE expects tokens of width {self.sae.config.d_in}, got {tokens.shape[-1]}")
        x = tokens.to(self.sae.b_pre.device, torch.float32)
        values, indices = self.sae.select(self.sae.pre_activation(x))
        codes = torch.zeros(
            (*x.shape[:-1], self.sae.config.n_latents), dtype=values.dtype, device=values.device
        ).scatter_(-1, indices, values)
        recon = self.sae.decode_sparse(values, indices)
        err = (recon - x).pow(2).mean(dim=-1)
        pooled = codes.amax(dim=1) if self.pooling == "max" else codes.mean(dim=1)
        return FeatureOutput(pooled.cpu().numpy(), err.cpu().numpy(), codes)


def feature_maps(codes: torch.Tensor, layout: TokenLayout, feature_ids: list[int]) -> list[dict[str, np.ndarray]]:
    """Per frame, camera -> (len(feature_ids), h, w) activation maps of the chosen features."""
    chosen = codes[..., feature_ids].transpose(1, 2)  # (B, F, S)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(codes.shape[0])]
    for cam in layout.cameras:
        block = chosen[:, :, cam.start : cam.stop].reshape(codes.shape[0], len(feature_ids), cam.height, cam.width)
        maps = block.float().cpu().numpy()
        for i in range(codes.shape[0]):
            out[i][cam.name] = maps[i]
    return out


def error_maps(token_error: np.ndarray, layout: TokenLayout) -> list[dict[str, np.ndarray]]:
    """Per frame, camera -> (h, w) reconstruction error: where an OOD score comes from."""
    maps = split_by_camera(torch.from_numpy(token_error), layout)
    return [{k: v[i].numpy() for k, v in maps.items()} for i in range(token_error.shape[0])]
