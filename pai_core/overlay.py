"""Attention overlays: heatmap on the camera image, a state-attention bar and the camera name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Mapping

import cv2
import numpy as np

from .attention import normalize_maps
from .engine import FrameResult
from .observation import Observation

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}


@dataclass
class OverlayConfig:
    """How overlays look.

    Args:
        source: "attention" (decoder cross-attention) or "rollout" (attention rollout).
        colormap: one of ``COLORMAPS``.
        alpha: heatmap opacity in [0, 1].
        normalize: "global" scales all cameras by one maximum, "per_camera" each by its own.
        state_bar: draw a bar on the left edge whose height is the state token's attention share.
        label: write the camera name and its attention share.
    """

    source: Literal["attention", "rollout"] = "attention"
    colormap: str = "jet"
    alpha: float = 0.5
    normalize: Literal["global", "per_camera"] = "global"
    state_bar: bool = True
    label: bool = True

    def __post_init__(self) -> None:
        if self.source not in ("attention", "rollout"):
            raise ValueError(f"source={self.source!r} is not one of 'attention', 'rollout'")
        if self.colormap not in COLORMAPS:
            raise ValueError(f"colormap={self.colormap!r} is not one of {sorted(COLORMAPS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be within [0, 1]")
        if self.normalize not in ("global", "per_camera"):
            raise ValueError(f"normalize={self.normalize!r} is not one of 'global', 'per_camera'")


@lru_cache(maxsize=None)
def _colormap_lut(colormap: str) -> np.ndarray:
    """(256, 1, 3) RGB lookup table: ``cv2.applyColorMap`` costs ~9 ms a call, a LUT ~0.3 ms."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.cvtColor(cv2.applyColorMap(ramp, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB).reshape(256, 1, 3)


Scale = tuple[float, float]


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
                    weighted: bool = False) -> np.ndarray:
    """Blend a [0, 1] map of any size onto an RGB uint8 image (returns a new RGB uint8 image).

    ``weighted``: each pixel's opacity is ``alpha * heat``, so where the map is 0 the image shows through
    untinted (for maps on a fixed scale, where 0 means "nothing unusual"); otherwise opacity is ``alpha``
    everywhere and 0 gets the colormap's lowest colour.
    """
    h, w = image.shape[:2]
    heat8 = (np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    heat8 = cv2.resize(heat8, (w, h), interpolation=cv2.INTER_LINEAR)
    colored = cv2.LUT(cv2.cvtColor(heat8, cv2.COLOR_GRAY2RGB), _colormap_lut(colormap))
    if not weighted:
        return cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
    a = heat8[..., None].astype(np.float32) * (alpha / 255.0)
    return (image * (1.0 - a) + colored * a + 0.5).astype(np.uint8)


def fixed_scale(maps: Mapping[str, np.ndarray], scale: Scale | Mapping[str, Scale]) -> dict[str, np.ndarray]:
    """Map values linearly to [0, 1] with ``scale = (low, high)`` (one for all cameras, or one per camera),
    clipped: the same value gets the same colour in every frame, unlike ``normalize_maps``."""
    out = {}
    for name, m in maps.items():
        low, high = scale[name] if isinstance(scale, Mapping) else scale
        if not high > low:
            raise ValueError(f"overlay scale for {name} must have high > low, got ({low}, {high})")
        out[name] = np.clip((np.asarray(m, np.float32) - low) / (high - low), 0.0, 1.0)
    return out


def _draw_state_bar(img: np.ndarray, share: float) -> None:
    h = img.shape[0]
    width = max(6, img.shape[1] // 64)
    top = int(round(h * (1.0 - min(max(share, 0.0), 1.0))))
    cv2.rectangle(img, (0, 0), (width, h - 1), (40, 40, 40), -1)
    cv2.rectangle(img, (0, top), (width, h - 1), (255, 255, 255), -1)


def _draw_label(img: np.ndarray, text: str) -> None:
    scale = max(0.4, img.shape[1] / 1000.0)
    org = (max(12, img.shape[1] // 40), int(24 * scale / 0.6))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def render_overlays(
    obs: Observation, result: FrameResult, config: OverlayConfig | None = None,
    maps: dict[str, np.ndarray] | None = None, scale: Scale | Mapping[str, Scale] | None = None,
) -> dict[str, np.ndarray]:
    """One RGB overlay per camera at the camera's own resolution.

    ``maps`` replaces the attention maps (for SAE feature or OOD error maps); it is normalised the same way.
    ``scale`` = (value shown untinted, value shown at full heat), one for all cameras or one per camera:
    maps go on that fixed scale (``fixed_scale``) instead of being normalised per frame, and the heat sets
    each pixel's opacity. Per-frame normalisation makes the hottest patch of a clean frame as hot as that of
    an OOD one; a fixed scale (e.g. from the OOD threshold, ``replay.video.ood_map_scale``) keeps clean frames clean.
    """
    config = config or OverlayConfig()
    raw = maps if maps is not None else (result.rollout if config.source == "rollout" else result.attention)
    scaled = normalize_maps(raw, config.normalize) if scale is None else fixed_scale(raw, scale)
    out = {}
    for name, heat in scaled.items():
        image = obs.images.get(name)
        if image is None:
            image = obs.images[name.rsplit(".", 1)[-1]]
        img = heatmap_overlay(image, heat, config.colormap, config.alpha, weighted=scale is not None)
        if config.state_bar and result.layout.state_index is not None:
            _draw_state_bar(img, result.state_share)
        if config.label:
            _draw_label(img, f"{name.rsplit('.', 1)[-1]}  {100 * result.camera_share.get(name, 0.0):.0f}%"
                        f"  state {100 * result.state_share:.0f}%")
        out[name] = img
    return out
