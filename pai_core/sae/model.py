"""TopK sparse autoencoder over single encoder tokens (Gao et al., 2024; openai/sparse_autoencoder).

One SAE is shared by every token position, so its size depends on ``dim_model`` only, never on the
number of tokens (the seed's whole-frame SAE had 3.1 B parameters at dim_model 512).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass
class SAEConfig:
    """Architecture of a TopK SAE and where its inputs come from.

    Args:
        d_in: token width (the policy's ``dim_model``).
        expansion_factor: number of latents = ``expansion_factor * d_in``.
        k: active latents per token (TopK).
        aux_k: latents used by the auxiliary dead-latent loss (AuxK).
        dead_tokens: a latent that has not fired for this many training tokens counts as dead and joins
            AuxK (the trainer sets it from the run's length, ``TrainConfig.dead_window``).
        min_usage: usage floor, as a fraction of the uniform rate k / n_latents: a latent chosen for fewer
            of a batch's tokens has its ``selection_bias`` raised, one chosen for more has it lowered back
            towards 0 (0 turns the floor off).
        usage_bias_rate: step of ``selection_bias`` per training batch, as a fraction of the batch's mean
            active value.
        layer: encoder layer the tokens come from (as ``IntrospectionConfig.token_layer``).
        pooling: how a frame's feature vector pools token activations: "max" or "mean".
        policy: path or hub id of the policy the SAE was trained on (for the model card).
    """

    d_in: int
    expansion_factor: int = 16
    k: int = 32
    aux_k: int = 256
    dead_tokens: int = 10_000_000
    min_usage: float = 0.0
    usage_bias_rate: float = 3e-3
    layer: int = -1
    pooling: Literal["max", "mean"] = "max"
    policy: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.expansion_factor <= 0:
            raise ValueError(f"d_in={self.d_in} and expansion_factor={self.expansion_factor} must be positive")
        if not 0 < self.k <= self.n_latents:
            raise ValueError(f"k={self.k} must be within 1..n_latents ({self.n_latents})")
        if self.aux_k < 1 or self.dead_tokens < 1:
            raise ValueError(f"aux_k={self.aux_k} and dead_tokens={self.dead_tokens} must be >= 1")
        if not 0.0 <= self.min_usage <= 1.0:
            raise ValueError(f"min_usage={self.min_usage} must be within 0..1 (a fraction of the uniform rate k/n)")
        if self.usage_bias_rate < 0:
            raise ValueError(f"usage_bias_rate={self.usage_bias_rate} must be >= 0")
        if self.pooling not in ("max", "mean"):
            raise ValueError(f"pooling={self.pooling!r} is not one of 'max', 'mean'")

    @property
    def n_latents(self) -> int:
        return self.d_in * self.expansion_factor

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        """From ``config.json``. Files written before the rename call the window ``dead_steps`` (it always
        counted tokens)."""
        data = dict(data)
        if "dead_steps" in data:
            data.setdefault("dead_tokens", data.pop("dead_steps"))
        return cls(**data)


class SparseAutoencoder(nn.Module):
    """``z = TopK_k(ReLU(W_enc (x - b_pre) + b_enc))``, ``x̂ = W_dec z + b_pre``, decoder rows unit norm.

    The k latents are chosen by their pre-activation plus ``selection_bias``; their values are the
    pre-activations themselves, so the bias decides which latents fire, never how strongly (the bias-only
    routing of auxiliary-loss-free load balancing, DeepSeek-V3). The bias is 0 except for latents training
    found chosen too rarely (``SAEConfig.min_usage``). On the demo's 54 k training tokens (3,881 frames) a
    plain TopK + AuxK SAE left 35 % of its 1,024 latents silent on the 13,580 held-out tokens: latents that
    fire on a handful of training frames stay positive-but-outranked, which AuxK's dead window never sees;
    with the floor 0.2 % were silent, at a lower held-out FVU (0.0041 against 0.0048).

    Parameters:
        b_pre: (d_in,) pre-encoder bias, initialised to the mean token (centring).
        W_enc: (d_in, n_latents) encoder.
        b_enc: (n_latents,) encoder bias.
        W_dec: (n_latents, d_in) decoder; each row (a feature's direction) has unit norm.
    Buffers:
        tokens_since_fired: (n_latents,) training tokens since each latent was last active; saved with
            the weights so resumed training and the dead-latent metric stay correct.
    """

    tokens_since_fired: torch.Tensor  # registered buffers (nn.Module's __getattr__ would say Tensor | Module)
    selection_bias: torch.Tensor

    def __init__(self, config: SAEConfig):
        super().__init__()
        self.config = config
        d, n = config.d_in, config.n_latents
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.W_enc = nn.Parameter(torch.empty(d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.long))
        self.register_buffer("selection_bias", torch.zeros(n))
        nn.init.kaiming_uniform_(self.W_dec)
        self.unit_norm_decoder_()
        with torch.no_grad():
            self.W_enc.copy_(self.W_dec.t())

    @torch.no_grad()
    def unit_norm_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., n_latents) before TopK."""
        return ((x - self.b_pre) @ self.W_enc).add_(self.b_enc).relu_()  # in place: no (..., n_latents) copies

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., n_latents) pre-activations -> (values, indices), each (..., k): the k largest positive
        pre-activations after adding ``selection_bias`` (a latent at 0 is never chosen over a positive one,
        so a token keeps k active latents whenever k are positive). Values are the pre-activations."""
        # pre >= 0 (ReLU): sign is 1 where positive and 0 elsewhere, so this is
        # where(pre > 0, pre + bias, pre), bit for bit, in one pass fewer over (..., n_latents)
        with torch.no_grad():  # the choice only: gradients flow through the gathered values
            indices = pre.sign().mul_(self.selection_bias).add_(pre).topk(self.config.k, dim=-1).indices
        return pre.gather(-1, indices), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., n_latents) sparse codes with at most k non-zeros per token."""
        pre = self.pre_activation(x)
        values, indices = self.select(pre)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    @torch.no_grad()
    def update_selection_bias_(
        self, counts: torch.Tensor, tokens: int | torch.Tensor, mean_value: torch.Tensor
    ) -> None:
        """After a training batch of ``tokens`` tokens in which latent i was active ``counts[i]`` times: raise
        the bias of latents below the usage floor, lower the others' towards 0 (no host sync)."""
        cfg = self.config
        if cfg.min_usage <= 0 or cfg.usage_bias_rate <= 0:
            return
        floor = cfg.min_usage * tokens * cfg.k / cfg.n_latents
        self.selection_bias.add_(cfg.usage_bias_rate * mean_value * torch.sign(floor - counts)).clamp_(min=0.0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # SAEs saved before the selection bias existed choose by TopK alone: their bias is 0
        state_dict.setdefault(prefix + "selection_bias", torch.zeros_like(self.selection_bias))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., n_latents) -> (..., d_in)."""
        return z @ self.W_dec + self.b_pre

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(..., k) active values and their latent indices (``select``) -> (..., d_in), equal to ``decode`` of
        the scattered codes: a weighted sum of k decoder rows per token instead of a dense (n_latents x d_in)
        product, which is n_latents / k times the work (inference: ``features.FeatureExtractor``)."""
        k = indices.shape[-1]
        rows = torch.nn.functional.embedding_bag(
            indices.reshape(-1, k),
            self.W_dec,
            per_sample_weights=values.reshape(-1, k).to(self.W_dec.dtype),
            mode="sum",
        )
        return rows.reshape(*indices.shape[:-1], self.W_dec.shape[1]) + self.b_pre

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, codes)."""
        z = self.encode(x)
        return self.decode(z), z
