"""LeRobot ACT adapter: forward hooks on the modules ACT already runs; modeling_act.py stays untouched.

ACT calls every ``nn.MultiheadAttention`` with ``need_weights=True`` (the default), so head-averaged
attention weights are computed anyway; a hook only keeps a reference to them. The backbone hook records
each camera's feature-map shape, so the token layout follows the real input sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ..layout import TokenLayout
from .base import Capture
from .graph_safe import DeviceFactories

OBS_IMAGES = "observation.images"


class ACTAdapter:
    """Hooks a LeRobot ``ACTPolicy`` and runs ``policy.model`` once per batch.

    Args:
        policy: a LeRobot ``ACTPolicy``.
        token_layer: encoder layer whose output tokens are captured (negative counts from the end).
        keep_vision_features: also capture the backbone's ``VISION_LAYERS`` outputs per camera (for the
            ``patch_knn`` OOD score); off by default, as the early maps are large at full resolution.
    """

    VISION_LAYERS = ("layer1", "layer2")

    def __init__(self, policy: nn.Module, token_layer: int = -1, keep_vision_features: bool = False):
        self.policy = policy
        # ACT's model and config come from lerobot, which ships no types (nn.Module's __getattr__ says Tensor | Module)
        self.model: Any = cast(Any, policy.model)
        cfg: Any = cast(Any, policy.config)
        layers = self.model.encoder.layers
        if not -len(layers) <= token_layer < len(layers):
            raise ValueError(f"token_layer={token_layer} but the ACT encoder has {len(layers)} layers")
        self.token_layer = token_layer % len(layers)
        self.camera_names = list(cfg.image_features)
        self.has_state = cfg.robot_state_feature is not None
        self.has_env_state = cfg.env_state_feature is not None
        self._enc_attn: list[torch.Tensor | None] = [None] * len(layers)
        self._cross: torch.Tensor | None = None
        self._tokens: torch.Tensor | None = None
        self._feature_shapes: list[tuple[int, int]] = []
        self.backbone_calls = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for i, layer in enumerate(layers):
            self._handles.append(layer.self_attn.register_forward_hook(self._keep_encoder_attention(i)))
        self._handles.append(
            self.model.decoder.layers[-1].multihead_attn.register_forward_hook(self._keep_cross_attention)
        )
        self._handles.append(layers[self.token_layer].register_forward_hook(self._keep_tokens))
        self._input: torch.Tensor | None = None
        self._handles.append(self.model.encoder.register_forward_pre_hook(self._keep_input, with_kwargs=True))
        self.keep_vision_features = keep_vision_features
        self._vision: list[torch.Tensor] = []
        if cfg.image_features:
            self._handles.append(self.model.backbone.register_forward_hook(self._keep_feature_shape))
            for name in self.VISION_LAYERS:
                self._handles.append(getattr(self.model.backbone, name).register_forward_hook(self._keep_vision))

    def _keep_encoder_attention(self, index: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            self._enc_attn[index] = output[1]

        return hook

    def _keep_cross_attention(self, _module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
        self._cross = output[1]

    def _keep_tokens(self, _module: nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        self._tokens = output  # (S, B, D)

    def _keep_input(self, _module: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
        self._input = args[0]  # (S, B, D) encoder input: projected backbone features, state, latent

    def _keep_vision(self, _module: nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if self.keep_vision_features:
            self._vision.append(output)

    def _keep_feature_shape(self, _module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
        self.backbone_calls += 1
        fmap = output["feature_map"]
        self._feature_shapes.append((int(fmap.shape[-2]), int(fmap.shape[-1])))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Capture]:
        """One forward of ``policy.model`` on a preprocessed batch, as ``predict_action_chunk`` does it.

        Returns:
            actions: (B, T, A) normalised action chunk, exactly what LeRobot's policy computes.
            capture: attention weights, encoder tokens and layout of this very pass.
        """
        self._feature_shapes = []
        self._vision = []
        model_batch: dict[str, Any] = batch
        if self.camera_names:
            model_batch = dict(batch)
            model_batch[OBS_IMAGES] = [batch[key] for key in self.camera_names]
        actions = self.model(model_batch)[0]
        if self._cross is None or any(a is None for a in self._enc_attn) or self._tokens is None or self._input is None:
            raise RuntimeError("ACT forward ran but the attention hooks captured nothing; is need_weights off?")
        layout = TokenLayout.build(self.has_state, self.has_env_state, self.camera_names, self._feature_shapes)
        capture = Capture(
            layout=layout,
            encoder_attention=cast(list[torch.Tensor], list(self._enc_attn)),  # none is None (checked above)
            cross_attention=self._cross,
            tokens=self._tokens.transpose(0, 1),
            input_tokens=self._input.transpose(0, 1),
        )
        if self.keep_vision_features:  # the backbone runs once per camera, in camera order
            n = len(self.VISION_LAYERS)
            capture.vision_features = {
                cam: self._vision[i * n : (i + 1) * n] for i, cam in enumerate(self.camera_names)
            }
            self._vision = []
        self._enc_attn = [None] * len(self._enc_attn)
        self._cross = self._tokens = None
        return actions, capture

    def graph_safe(self, device: torch.device | str) -> DeviceFactories:
        """Context for capturing ``forward`` as a CUDA graph: ``ACT.forward`` makes its zero latent on the CPU
        and copies it over, which a capture refuses; inside this context it is made on ``device`` (same
        zeros, so the same outputs). LeRobot's modeling_act.py stays untouched."""
        return DeviceFactories(device)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
