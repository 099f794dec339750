"""The CUDA-graph live path of ``Introspector.step``: one graph replay per observation.

At batch 1 an ACT forward on a GPU is bound by kernel launches (eager 9.5-17 ms on an H100, 3.9 ms as a
graph; docs/gpu.md). ``GraphStep`` captures, once, everything from the camera bytes to the small results:
uint8 images in static device buffers -> float (C, H, W) -> LeRobot's preprocessor -> the policy through
the adapter's hooks (which only keep references, so they survive replay) -> decoder relevance and rollout,
reduced on the device. Each step copies the observation into pinned host buffers, from there
(asynchronously) into the static device buffers, replays, and returns clones of the outputs: the action
chunk (T, A) and the S-long relevance and rollout vectors are what the engine copies to the host; tokens
and feature maps stay on the device, cloned out of the graph's memory so a result that is kept is never
overwritten by the next replay (and LeRobot's action queue never holds a view of the graph's buffer).

``mode``: "auto" (the default) captures on CUDA and falls back to the eager forward, with the reason in
``status``, if the capture fails; "on" requires it (an ``InputError`` on the CPU, naming the device); "off"
never captures. On the CPU a graph cannot exist, so "auto" is eager there and ``status`` says why.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .adapters import Capture
from .configs import GRAPH_MODES, GraphMode, check_graph_mode
from .errors import ConfigError, ModelError, ObservationError, UsageError

if TYPE_CHECKING:
    from .engine import Introspector
    from .layout import TokenLayout
    from .observation import Observation

log = logging.getLogger(__name__)

WARMUP_RUNS = 3  # eager runs on a side stream before the capture (cuDNN picks its algorithms, lazy inits)


@dataclass
class GraphStatus:
    """Whether ``Introspector.step`` replays a CUDA graph, and why (not).

    Args:
        mode: the configured ``cuda_graph`` ("auto", "on", "off").
        active: steps use (or, before the first step, will capture) the graph.
        reason: one line for logs and diagnostics.
        captures: graphs captured so far (a change of ``keep_vision_features`` recaptures).
    """

    mode: str
    active: bool
    reason: str
    captures: int = 0

    def describe(self) -> str:
        return f"CUDA graph {'on' if self.active else 'off'} (cuda_graph={self.mode!r}): {self.reason}"


def decide(mode: str, device: torch.device) -> GraphStatus:
    """The status before any capture: on for CUDA unless ``mode`` is "off"; "on" off CUDA is an error."""
    check_graph_mode(mode)
    if mode == "off":
        return GraphStatus(mode, False, "disabled by configuration; every step runs the eager forward")
    if device.type != "cuda":
        if mode == "on":
            raise ConfigError(
                f"cuda_graph='on' needs a CUDA device, but the engine's device is {str(device)!r}; "
                "use device='cuda' or cuda_graph='auto'"
            )
        return GraphStatus(
            mode, False, f"device {str(device)!r} is not a CUDA device; every step runs the eager forward"
        )
    return GraphStatus(mode, True, "captured at the first step")


class StaticInputs:
    """The observation's tensors at fixed device addresses (what a captured graph reads), each fed from a
    pinned host buffer of the same shape so the host-to-device copy is asynchronous.

    Args:
        image_shapes: camera -> (H, W): the policy's training size (images are resized before ``load``).
        vectors: name -> length of each float32 vector input (``observation.state`` ...).
        device: the engine's device; host buffers are pinned only for CUDA.
    Buffers:
        images: camera -> (H, W, 3) uint8 on ``device``; vectors: name -> (n,) float32 on ``device``.
    """

    def __init__(self, image_shapes: dict[str, tuple[int, int]], vectors: dict[str, int], device: torch.device):
        pin = device.type == "cuda"
        self.device = device
        self.host_images = {
            k: torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=pin) for k, (h, w) in image_shapes.items()
        }
        self.host_vectors = {k: torch.empty(n, dtype=torch.float32, pin_memory=pin) for k, n in vectors.items()}
        self.images = {k: torch.empty_like(v, device=device) for k, v in self.host_images.items()}
        self.vectors = {k: torch.empty_like(v, device=device) for k, v in self.host_vectors.items()}

    def load(self, images: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> None:
        """Copy one observation in place: images (H, W, 3) uint8 at the buffers' sizes, vectors float32."""
        for key, host in self.host_images.items():
            np.copyto(host.numpy(), images[key])
            self.images[key].copy_(host, non_blocking=True)
        for key, host in self.host_vectors.items():
            np.copyto(host.numpy(), vectors[key])
            self.vectors[key].copy_(host, non_blocking=True)


@dataclass
class StaticOutputs:
    """The graph's results at fixed addresses, overwritten by every replay (``GraphStep.run`` clones them).

    Args:
        actions: (1, T, A) normalised action chunk.
        relevance: (1, S) decoder attention mass per encoder token.
        rollout: (1, S) attention rollout, or None when the engine's rollout is off.
        cross_attention: (1, T, S) decoder cross-attention (kept for completeness; not copied per step).
        tokens, input_tokens: (1, S, D) encoder output and input tokens.
        vision: camera -> backbone maps [(1, C, h, w)] when the adapter keeps vision features, else None.
    """

    actions: torch.Tensor
    relevance: torch.Tensor
    rollout: torch.Tensor | None
    cross_attention: torch.Tensor
    tokens: torch.Tensor
    input_tokens: torch.Tensor | None
    vision: dict[str, list[torch.Tensor]] | None


def _like(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.empty_like(t)


def _copy(dst: torch.Tensor | None, src: torch.Tensor | None) -> None:
    if dst is not None and src is not None:
        dst.copy_(src)


class GraphStep:
    """Runs ``Introspector.step``'s forward from static buffers, as a CUDA graph replay (``capture=True``) or
    as the same function called eagerly (``capture=False``: the buffer and copy logic without a graph, for
    the CPU and for bisecting a GPU problem).

    Args:
        engine: the ``Introspector`` whose preprocessor, adapter and reductions are captured.
        capture: capture a CUDA graph at the first ``run`` (needs a CUDA engine).
    """

    def __init__(self, engine: Introspector, capture: bool = True):
        if capture and engine.device.type != "cuda":
            raise UsageError(f"a CUDA graph needs a CUDA device; the engine's device is {str(engine.device)!r}")
        self.engine = engine
        self.capture = capture
        self.device = engine.device
        vectors = {"observation.state": engine.state_dim, "observation.environment_state": engine.env_state_dim}
        self.inputs = StaticInputs(engine.image_shapes, {k: n for k, n in vectors.items() if n}, self.device)
        self.outputs: StaticOutputs | None = None
        self.layout: TokenLayout | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self._key: tuple | None = None

    # ------------------------------------------------------------------ the captured function
    def _forward(self) -> StaticOutputs:
        """Static inputs -> outputs: what eager ``step`` computes, from the same functions."""
        engine = self.engine
        obs = {k: engine.image_to_model(v) for k, v in self.inputs.images.items()}
        obs.update(self.inputs.vectors)
        actions, capture = engine.adapter.forward(engine.loaded.preprocessor(obs))
        relevance, rolled = engine.reduce_attention(capture)
        self.layout = capture.layout
        return StaticOutputs(
            actions,
            relevance,
            rolled,
            capture.cross_attention,
            capture.tokens,
            capture.input_tokens,
            capture.vision_features,
        )

    def _store(self, out: StaticOutputs) -> None:
        """Copy fresh outputs into the static ones (allocated from the first outputs' shapes)."""
        if self.outputs is None:
            self.outputs = StaticOutputs(
                torch.empty_like(out.actions),
                torch.empty_like(out.relevance),
                _like(out.rollout),
                torch.empty_like(out.cross_attention),
                torch.empty_like(out.tokens),
                _like(out.input_tokens),
                {k: [torch.empty_like(m) for m in maps] for k, maps in out.vision.items()} if out.vision else None,
            )
        s = self.outputs
        for dst, src in (
            (s.actions, out.actions),
            (s.relevance, out.relevance),
            (s.rollout, out.rollout),
            (s.cross_attention, out.cross_attention),
            (s.tokens, out.tokens),
            (s.input_tokens, out.input_tokens),
        ):
            _copy(dst, src)
        if s.vision and out.vision:
            for cam, maps in s.vision.items():
                for dst, src in zip(maps, out.vision[cam]):
                    dst.copy_(src)

    def _settings(self) -> tuple:
        """What the captured function depends on besides the inputs: a change recaptures."""
        cfg = self.engine.config
        return (
            bool(getattr(self.engine.adapter, "keep_vision_features", False)),
            cfg.rollout,
            cfg.action_step,
            cfg.token_layer,
        )

    def _build(self) -> None:
        self.outputs = self.graph = None
        key = self._settings()
        if not self.capture:
            self._key = key
            return
        fix = getattr(self.engine.adapter, "graph_safe", None)
        device = self.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), fix(device) if fix else nullcontext():
            for _ in range(WARMUP_RUNS):
                self._store(self._forward())
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        caller = torch.cuda.current_stream(device)
        try:
            # thread_local: CUDA work of other threads (SAE, overlays) does not invalidate this capture
            with fix(device) if fix else nullcontext(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._store(self._forward())
        except Exception:
            torch.cuda.set_stream(caller)  # a failed capture_end leaves the capture stream current
            raise
        self.graph, self._key = graph, key
        self.captures += 1

    # ------------------------------------------------------------------ one step
    def run(self, obs: Observation) -> tuple[torch.Tensor, Capture, tuple[torch.Tensor, torch.Tensor | None]]:
        """One observation -> (actions (1, T, A), Capture, (relevance (1, S), rollout (1, S) or None)), all
        owned by the caller. Inputs are validated (and resized) exactly as the eager path does."""
        engine = self.engine
        images = {k: engine.image_array(obs, k) for k in engine.camera_names}
        self.inputs.load(images, engine.vector_arrays(obs))
        if self._key != self._settings():
            self._build()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._store(self._forward())
        s, layout = self.outputs, self.layout
        if s is None or layout is None:
            raise RuntimeError("the graph step ran but left no outputs")
        capture = Capture(
            layout=layout,
            encoder_attention=[],  # reduced inside the graph (relevance, rollout); not copied per step
            cross_attention=s.cross_attention,
            tokens=s.tokens.clone(),
            input_tokens=None if s.input_tokens is None else s.input_tokens.clone(),
            vision_features={k: [m.clone() for m in maps] for k, maps in s.vision.items()} if s.vision else None,
        )
        rolled = None if s.rollout is None else s.rollout.clone()
        return s.actions.clone(), capture, (s.relevance.clone(), rolled)


class LiveGraph:
    """The engine's handle on the graph path: the decision (``status``) and, when active, a ``GraphStep``.

    ``run`` returns None when the step must run eagerly: graphs off, or (mode "auto") the capture failed, in
    which case the reason is logged once and kept in ``status``."""

    def __init__(self, engine: Introspector, mode: str):
        self.engine = engine
        self.status = decide(mode, engine.device)
        self._step: GraphStep | None = None

    @classmethod
    def without_capture(cls, engine: Introspector) -> LiveGraph:
        """Steps through the static buffers with the captured function called eagerly, on any device: the
        graph path minus the replay (tests on the CPU; on a GPU, tells a buffer problem from a graph one)."""
        live = cls(engine, "off")
        live.status = GraphStatus("off", True, "static buffers without a graph (GraphStep(capture=False))")
        live._step = GraphStep(engine, capture=False)
        return live

    @property
    def active(self) -> bool:
        return self.status.active

    def run(self, obs: Observation) -> tuple[torch.Tensor, Capture, tuple[torch.Tensor, torch.Tensor | None]] | None:
        if not self.status.active:
            return None
        if self._step is None:
            self._step = GraphStep(self.engine, capture=True)
        if not self._step.capture:
            return self._step.run(obs)
        before = self._step.captures
        try:
            out = self._step.run(obs)
        except ObservationError:
            raise  # the observation is wrong, not the graph: the eager path would refuse it too
        except Exception as exc:
            if self._step.captures > before or self._step.graph is not None:
                raise  # a captured graph failed at replay: not a capture problem
            self._step = None
            if self.status.mode == "on":
                raise ModelError(f"cuda_graph='on': capturing the step as a CUDA graph failed: {exc}") from exc
            self.status = GraphStatus(
                self.status.mode,
                False,
                f"capture failed ({type(exc).__name__}: {exc}); every step runs the eager forward",
            )
            log.warning("%s", self.status.describe())
            return None
        if self._step.captures > before:
            self.status = GraphStatus(
                self.status.mode,
                True,
                f"captured on {self.engine.device} ({len(self.engine.camera_names)} cameras)",
                self._step.captures,
            )
        return out


__all__ = [
    "GRAPH_MODES",
    "GraphMode",
    "GraphStatus",
    "GraphStep",
    "LiveGraph",
    "StaticInputs",
    "StaticOutputs",
    "check_graph_mode",
    "decide",
]
