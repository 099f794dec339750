"""Dataclass configs that settings, the CLI and the node build before any model runs.

They live apart from the modules that use them (``engine``, ``overlay``, ``saliency``) so that building
them, reading ``config/introspect.yaml`` or answering ``pai --help`` imports neither torch nor OpenCV.
Those modules re-export them: ``from pai_core.overlay import OverlayConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import ConfigError
from .policy import ModelDtype, check_model_dtype

GraphMode = Literal["auto", "on", "off"]
GRAPH_MODES: tuple[str, ...] = get_args(GraphMode)

# OpenCV colour maps an overlay may use (``overlay.COLORMAPS`` maps each to its cv2 constant).
COLORMAP_NAMES: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "hot")

Aggregation = Literal["sum", "norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
Normalisation = Literal["percentile", "linear"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalisation)

# OOD appearance scores (``ood.registry``) and the further signals calibrated jointly with one.
OodScore = Literal["sae_recon_mse", "sae_recon_z", "token_knn", "patch_knn"]
OOD_SCORES: tuple[str, ...] = get_args(OodScore)
OodSignal = Literal["action_consistency"]
OOD_SIGNALS: tuple[str, ...] = get_args(OodSignal)

# Statistics ``pai analyse-features`` may rank features by (``analysis.stats.rank_features``).
RANK_BY: tuple[str, ...] = ("variance", "frequency", "mean", "max")


def check_graph_mode(mode: str) -> None:
    if mode not in GRAPH_MODES:
        raise ConfigError(f"cuda_graph={mode!r} is not one of {list(GRAPH_MODES)}")


@dataclass
class IntrospectionConfig:
    """What the engine computes besides the action.

    Args:
        device: torch device of the policy and of every tensor the engine computes ("cpu", "cuda").
        token_layer: encoder layer whose output tokens are returned for the SAE (-1: the last).
        action_step: None for attention averaged over the action chunk, else that step of the chunk.
        rollout: also compute attention rollout through the encoder layers.
        keep_tokens: return the encoder tokens (needed by the SAE; a reference, no copy).
        resize_images: resize camera images whose size differs from the policy's training size; when
            False such an image is an error.
        keep_vision_features: return the vision backbone's feature maps per camera (for ``patch_knn``).
        cuda_graph: "auto" (default: ``step`` replays a CUDA graph on a CUDA device, eager elsewhere or when
            the capture fails), "on" (required; an error off CUDA) or "off" (``cuda_graph.py``, docs/gpu.md).
        model_dtype: "float32", "bfloat16" or "float16": the policy's weights and inputs (``load_policy``).
        policy_overrides: policy config fields set before the policy is built (``policy.apply_overrides``).
    """

    device: str = "cpu"
    token_layer: int = -1
    action_step: int | None = None
    rollout: bool = True
    keep_tokens: bool = True
    resize_images: bool = True
    keep_vision_features: bool = False
    cuda_graph: GraphMode = "auto"
    model_dtype: ModelDtype = "float32"
    policy_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_graph_mode(self.cuda_graph)
        check_model_dtype(self.model_dtype)


@dataclass
class OverlayConfig:
    """How overlays look.

    Args:
        source: "attention" (decoder cross-attention) or "rollout" (attention rollout).
        colormap: one of ``COLORMAP_NAMES``.
        alpha: heatmap opacity in [0, 1].
        normalize: "global" scales all cameras by one maximum, "per_camera" each by its own.
        state_bar: draw a bar on the left edge whose height is the state token's attention share.
        label: write the camera name and its attention share (scaled to fit inside the image).
        weighted: opacity follows the map (``alpha`` at the map's top, untinted where it is 0), so the
            image shows where attention is low; off: ``alpha`` everywhere (the whole frame tinted).
        mark_peak: ring the map's maximum.
    """

    source: Literal["attention", "rollout"] = "attention"
    colormap: str = "jet"
    alpha: float = 0.5
    normalize: Literal["global", "per_camera"] = "global"
    state_bar: bool = True
    label: bool = True
    weighted: bool = True
    mark_peak: bool = True

    def __post_init__(self) -> None:
        if self.source not in ("attention", "rollout"):
            raise ValueError(f"source={self.source!r} is not one of 'attention', 'rollout'")
        if self.colormap not in COLORMAP_NAMES:
            raise ValueError(f"colormap={self.colormap!r} is not one of {sorted(COLORMAP_NAMES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be within [0, 1]")
        if self.normalize not in ("global", "per_camera"):
            raise ValueError(f"normalize={self.normalize!r} is not one of 'global', 'per_camera'")


@dataclass
class SaliencyConfig:
    """What integrated gradients attribute and how the maps are scaled for display.

    Args:
        aggregation: how the selected actions become one number: "sum" (the seed's default) or "norm"
            (their L2 norm, so actions of either sign count).
        action_step: only this step of the action chunk (0: the action executed next); None: every step.
            The seed's ``--aggregation timestep --timestep-idx``.
        action_dim: only this action dimension (e.g. the gripper's index); None: every dimension. The
            seed's ``--aggregation action_dim --action-dim-idx``. Both may be set.
        steps: integration points between the baseline and the input (the seed's ``n_integration_steps``).
        batch_size: interpolated inputs per forward/backward pass (memory against speed).
        normalisation: per-frame display scale over every camera and the state together: "percentile"
            clips at ``percentile`` and divides (robust to a few extreme pixels), "linear" is min-max.
        percentile: the clip percentile of "percentile" normalisation, in (0, 100].
    """

    aggregation: Aggregation = "sum"
    action_step: int | None = None
    action_dim: int | None = None
    steps: int = 20
    batch_size: int = 10
    normalisation: Normalisation = "percentile"
    percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r} is not one of {list(AGGREGATIONS)}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation={self.normalisation!r} is not one of {list(NORMALISATIONS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be at least 1")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile} must be within (0, 100]")
        for name in ("action_step", "action_dim"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (or None for all)")
