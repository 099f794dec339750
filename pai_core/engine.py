"""The introspection engine: one policy forward per observation yields the action and everything we
look at (attention maps, rollout, attention shares, encoder tokens)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .adapters import Capture, make_adapter
from .attention import attention_rollout, decoder_relevance, split_by_camera
from .configs import IntrospectionConfig
from .cuda_graph import LiveGraph
from .errors import ObservationError
from .layout import TokenLayout
from .observation import Observation, camera_short
from .policy import LoadedPolicy, load_policy


@dataclass
class FrameResult:
    """Everything one forward pass produced for one observation.

    Attention maps hold attention mass per camera token: over all tokens (cameras, state, latent) it
    sums to 1. ``normalize_maps`` scales them to [0, 1] for display.

    Args:
        timestamp: the observation's timestamp (seconds).
        action: (A,) next action in real units with LeRobot's queueing (``step``) or the chunk's first
            action (``step_batch``).
        action_chunk: (T, A) predicted action chunk in real units.
        attention: camera -> (h, w) decoder cross-attention mass.
        rollout: camera -> (h, w) attention rollout mass (empty when rollout is off).
        camera_share: camera -> share of the decoder's attention on that camera's tokens.
        state_share: share on the robot-state token (0 when the policy has none).
        latent_share: share on the latent token.
        tokens: (S, D) encoder output tokens on the engine's device, or None.
        input_tokens: (S, D) encoder input tokens on the engine's device, or None.
        vision_features: camera -> backbone feature maps (C, h, w), finest first, or None.
        layout: token layout of this pass.
        latency_ms: wall time of the engine call that produced this frame.
    """

    timestamp: float
    action: np.ndarray
    action_chunk: np.ndarray
    attention: dict[str, np.ndarray]
    rollout: dict[str, np.ndarray]
    camera_share: dict[str, float]
    state_share: float
    latent_share: float
    tokens: torch.Tensor | None
    layout: TokenLayout
    input_tokens: torch.Tensor | None = None
    vision_features: dict[str, list[torch.Tensor]] | None = None
    latency_ms: float = 0.0
    frame_index: int = -1
    episode_index: int = -1


class Introspector:
    """Runs a LeRobot policy with introspection, one forward pass per observation.

    ``step`` is a drop-in for ``postprocessor(policy.select_action(preprocessor(obs)))``: same action,
    bit for bit, from LeRobot's own action queue or temporal ensembler; introspection never resets or
    advances that queue. ``step_batch`` runs many observations at once for replay and training.
    """

    def __init__(self, loaded: LoadedPolicy, config: IntrospectionConfig | None = None):
        self.config = config or IntrospectionConfig()
        self.loaded = loaded
        self.policy = loaded.policy.eval()
        self.device = torch.device(self.config.device)
        self.adapter = make_adapter(
            self.policy, token_layer=self.config.token_layer, keep_vision_features=self.config.keep_vision_features
        )
        pcfg = self.policy.config
        self.camera_names: list[str] = list(pcfg.image_features)
        self.image_shapes: dict[str, tuple[int, int]] = {
            k: (int(f.shape[1]), int(f.shape[2])) for k, f in pcfg.image_features.items()
        }
        self.state_dim = int(pcfg.robot_state_feature.shape[0]) if pcfg.robot_state_feature else 0
        self.env_state_dim = int(pcfg.env_state_feature.shape[0]) if pcfg.env_state_feature else 0
        self.action_dim = int(pcfg.action_feature.shape[0])
        self.graph = LiveGraph(self, self.config.cuda_graph)  # graph.status says whether step replays a graph

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, config: IntrospectionConfig | None = None) -> Introspector:
        """Load a LeRobot ``pretrained_model`` directory or hub id and wrap it."""
        config = config or IntrospectionConfig()
        return cls(load_policy(path_or_repo_id, config.device, config.model_dtype, config.policy_overrides), config)

    @classmethod
    def wrap(
        cls, policy: nn.Module, preprocessor: Any, postprocessor: Any, config: IntrospectionConfig | None = None
    ) -> Introspector:
        """Wrap a policy you already built in your own LeRobot control loop."""
        return cls(LoadedPolicy(policy, preprocessor, postprocessor, source="<wrapped>"), config)

    @property
    def fingerprint(self) -> str:
        """``policy.policy_fingerprint`` of this policy (what SAE and OOD files record)."""
        if getattr(self, "_fingerprint", None) is None:
            from .policy import policy_fingerprint

            self._fingerprint = self.loaded.fingerprint or policy_fingerprint(self.policy)
        return self._fingerprint

    def reset(self) -> None:
        """Start a new episode: clears LeRobot's action queue / temporal ensembler."""
        self.policy.reset()

    # ------------------------------------------------------------------ inputs
    def _image_tensor(self, obs: Observation, key: str) -> torch.Tensor:
        return self.image_to_model(torch.from_numpy(self.image_array(obs, key)).to(self.device, non_blocking=True))

    @staticmethod
    def image_to_model(image: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float in [0, 1], contiguous: a channels-last view makes the backbone's
        convolutions ~3 % slower on CPU."""
        return image.permute(2, 0, 1).contiguous().float().div_(255.0)

    def image_array(self, obs: Observation, key: str) -> np.ndarray:
        """Camera ``key``'s image, checked and resized to the policy's training size: (H, W, 3) uint8, C order."""
        image = self._find_image(obs, key)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"dtype {getattr(image, 'dtype', type(image).__name__)} shape {getattr(image, 'shape', '?')}"
            raise ObservationError(f"Camera {key!r}: expected a uint8 RGB image of shape (H, W, 3), got {got}")
        h, w = self.image_shapes[key]
        if image.shape[:2] != (h, w):
            if not self.config.resize_images:
                raise ObservationError(
                    f"Camera {key!r}: expected image size {h}x{w} (the policy's training size), got "
                    f"{image.shape[0]}x{image.shape[1]}; enable resize_images to resize"
                )
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if not image.flags.writeable or not image.flags.c_contiguous:  # e.g. a view on a message buffer
            image = np.array(image, order="C")
        return image

    def _find_image(self, obs: Observation, key: str) -> np.ndarray:
        if key in obs.images:
            return obs.images[key]
        short = camera_short(key)
        if short in obs.images:
            return obs.images[short]
        raise ObservationError(
            f"Observation is missing camera {key!r}; the policy expects cameras {self.camera_names}, "
            f"got {sorted(obs.images)}"
        )

    def _vector(self, value: np.ndarray | Sequence[float] | None, name: str, size: int) -> np.ndarray:
        """A checked float32 copy of a state vector."""
        if value is None:
            raise ObservationError(f"Observation is missing {name}: the policy expects {size} values")
        arr = np.asarray(value, dtype=np.float32).reshape(-1) if np.ndim(value) <= 1 else np.asarray(value)
        if arr.ndim != 1 or arr.shape[0] != size:
            raise ObservationError(f"{name}: expected a vector of {size} values, got shape {np.shape(value)}")
        if not np.all(np.isfinite(arr)):
            raise ObservationError(f"{name}: values must be finite, got {arr.tolist()}")
        return arr.copy()

    def vector_arrays(self, obs: Observation) -> dict[str, np.ndarray]:
        """The observation's checked state vectors by LeRobot feature name (float32)."""
        out = {}
        if self.state_dim:
            out["observation.state"] = self._vector(obs.state, "observation.state", self.state_dim)
        if self.env_state_dim:
            out["observation.environment_state"] = self._vector(
                obs.env_state, "observation.environment_state", self.env_state_dim
            )
        return out

    def observation_to_dict(self, obs: Observation) -> dict[str, torch.Tensor]:
        """The unbatched LeRobot observation dict (what ``preprocessor`` takes) for one observation."""
        out = {key: self._image_tensor(obs, key) for key in self.camera_names}
        out.update({k: torch.from_numpy(v).to(self.device) for k, v in self.vector_arrays(obs).items()})
        return out

    def _preprocess(self, observations: Sequence[Observation]) -> dict[str, torch.Tensor]:
        items = [self.observation_to_dict(o) for o in observations]
        if len(items) == 1:
            return self.loaded.preprocessor(items[0])
        return self.loaded.preprocessor({k: torch.stack([it[k] for it in items]) for k in items[0]})

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def step(self, obs: Observation) -> FrameResult:
        """Introspect one observation and return the next action to execute (LeRobot queueing)."""
        start = time.perf_counter()
        graphed = self.graph.run(obs)  # None: no CUDA graph (CPU, off, or its capture failed)
        if graphed is None:
            actions, capture = self.adapter.forward(self._preprocess([obs]))
            reduced = None
        else:
            actions, capture, reduced = graphed
        action = self._next_action(actions)
        real_action = self.loaded.postprocessor(action)
        return self._results([obs], actions, capture, start, next_actions=real_action, reduced=reduced)[0]

    @torch.inference_mode()
    def step_batch(self, observations: Sequence[Observation]) -> list[FrameResult]:
        """Introspect a batch of independent observations (replay, training); the action queue is
        untouched and each result's ``action`` is the first action of its chunk."""
        if not observations:
            return []
        start = time.perf_counter()
        batch = self._preprocess(observations)
        actions, capture = self.adapter.forward(batch)
        return self._results(observations, actions, capture, start, next_actions=None)

    def _next_action(self, actions: torch.Tensor) -> torch.Tensor:
        """LeRobot's ``select_action`` semantics on a chunk that is already computed."""
        cfg = self.policy.config
        if cfg.temporal_ensemble_coeff is not None:
            return self.policy.temporal_ensembler.update(actions)
        queue = self.policy._action_queue
        if len(queue) == 0:
            queue.extend(actions[:, : cfg.n_action_steps].transpose(0, 1))
        return queue.popleft()

    def reduce_attention(self, capture: Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S) decoder relevance and (B, S) rollout (None when rollout is off), on the engine's device."""
        relevance = decoder_relevance(capture.cross_attention, self.config.action_step)
        rolled = attention_rollout(relevance, capture.encoder_attention) if self.config.rollout else None
        return relevance, rolled

    def _results(
        self,
        observations: Sequence[Observation],
        actions: torch.Tensor,
        capture: Capture,
        start: float,
        next_actions: torch.Tensor | None,
        reduced: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> list[FrameResult]:
        """``reduced``: (relevance, rollout) when already computed (the CUDA graph does it on the device)."""
        chunk = self.loaded.postprocessor(actions).detach().cpu().numpy()
        relevance, rolled = reduced if reduced is not None else self.reduce_attention(capture)
        layout = capture.layout
        rel_t = relevance.float().cpu()  # one copy of S values per frame; the maps are views of it
        attn = {k: v.numpy() for k, v in split_by_camera(rel_t, layout).items()}
        rollout = {}
        if rolled is not None:
            rollout = {k: v.numpy() for k, v in split_by_camera(rolled.float().cpu(), layout).items()}
        rel = rel_t.numpy()
        first = next_actions.detach().cpu().numpy() if next_actions is not None else chunk[:, 0]
        latency = (time.perf_counter() - start) * 1000.0
        results = []
        for i, obs in enumerate(observations):
            results.append(
                FrameResult(
                    timestamp=float(obs.timestamp),
                    action=first[i],
                    action_chunk=chunk[i],
                    attention={k: v[i] for k, v in attn.items()},
                    rollout={k: v[i] for k, v in rollout.items()},
                    camera_share={k: float(v[i].sum()) for k, v in attn.items()},
                    state_share=float(rel[i, layout.state_index]) if layout.state_index is not None else 0.0,
                    latent_share=float(rel[i, layout.latent_index]),
                    tokens=capture.tokens[i] if self.config.keep_tokens else None,
                    input_tokens=(
                        capture.input_tokens[i]
                        if self.config.keep_tokens and capture.input_tokens is not None
                        else None
                    ),
                    vision_features=(
                        {k: [m[i] for m in maps] for k, maps in capture.vision_features.items()}
                        if capture.vision_features
                        else None
                    ),
                    layout=layout,
                    latency_ms=latency,
                    frame_index=obs.frame_index,
                    episode_index=obs.episode_index,
                )
            )
        return results
