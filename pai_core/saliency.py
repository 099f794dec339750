"""Integrated-gradients saliency for a plain LeRobot ACT policy (the seed's ``ACTPolicyWithGradients``).

Attention shows where the model *looks*; integrated gradients (Sundararajan et al., 2017) show which input
values the predicted actions *depend on*. For a scalar ``f`` of the action chunk (``SaliencyConfig``:
aggregation, action step, action dimension), an input ``x`` and a baseline ``x'`` (black images, zero
joint state, as the seed):

    attribution_i = (x_i - x'_i) * (1 / n) * sum_k  df/dx_i (x' + a_k (x - x')),   a_k = (k + 1/2) / n

and the attributions add up to ``f(x) - f(x')`` (completeness) up to the quadrature error. ACT's ReLUs make
the gradient jump along the path, so that error falls only about as 1 / n (on a tiny ACT: 25 % of the change
at 8 steps, 4 % at 32, 2 % at 128); each result reports it (``completeness_gap``). Inputs are the raw values the
policy sees before its normaliser: pixels in [0, 1] at the policy's image size, joints in robot units.
``f`` is taken on the model's normalised actions, so every action dimension counts alike.

Batched: the ``steps`` points of every frame in a call are spread over forward/backward passes of
``batch_size`` rows each (ACT's backbone uses frozen batch norm, so rows never mix).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .configs import AGGREGATIONS, NORMALISATIONS, IntrospectionConfig, Normalisation, SaliencyConfig
from .engine import Introspector
from .errors import UsageError
from .observation import Observation, camera_short
from .overlay import OverlayConfig, heatmap_overlay


@dataclass
class SaliencyResult:
    """Integrated-gradients attributions of one observation.

    Args:
        attribution: input name -> signed attribution in the shape the policy takes it: (3, H, W) per camera
            at the policy's image size, (S,) for ``observation.state`` (and the environment state).
        maps: camera -> (H, W) mean |attribution| over the colour channels (the seed's saliency map).
        display: camera -> (H, W) ``maps`` on the frame's display scale, in [0, 1].
        state_saliency: mean |attribution| over the joints on the same display scale (the seed's
            proprioception saliency); 0 for a policy without state.
        shares: input name -> its share of the frame's total |attribution| (cameras, state: sum to 1).
        target: f(x), the aggregated normalised action at the input.
        baseline_target: f(x') at the baseline.
        completeness_gap: sum of all attributions minus (target - baseline_target): the quadrature error.
    """

    timestamp: float
    frame_index: int
    episode_index: int
    attribution: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    display: dict[str, np.ndarray]
    state_saliency: float
    shares: dict[str, float]
    target: float
    baseline_target: float
    completeness_gap: float = field(default=0.0)


@contextlib.contextmanager
def _inputs_only(module: torch.nn.Module) -> Iterator[None]:
    """Parameters need no gradient: without it autograd also keeps every layer input for weight gradients."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def normalise(
    maps: dict[str, np.ndarray], state: float | None, mode: Normalisation = "percentile", percentile: float = 99.0
) -> tuple[dict[str, np.ndarray], float]:
    """Scale non-negative maps and the state value to [0, 1] on one scale for the whole frame (the seed's
    global normalisation): "percentile" clips at that percentile of every value, "linear" is min-max."""
    values: list[np.ndarray] = [np.asarray(m, np.float32).ravel() for m in maps.values()]
    if state is not None:
        values.append(np.asarray([state], np.float32))
    every = np.concatenate(values) if values else np.zeros(1, np.float32)
    if mode == "percentile":
        low, high = 0.0, float(np.percentile(every, percentile))
    else:
        low, high = float(every.min()), float(every.max())
    if not high > low:
        return {k: np.zeros_like(m, np.float32) for k, m in maps.items()}, 0.0

    def scale(v: np.ndarray | float) -> np.ndarray:
        return np.clip((np.asarray(v, np.float32) - low) / (high - low), 0.0, 1.0)

    return {k: scale(m) for k, m in maps.items()}, float(scale(state)) if state is not None else 0.0


class IntegratedGradients:
    """Integrated gradients of an ACT policy's action chunk with respect to its raw inputs.

    Use the engine of a replay or a control loop (``Introspector``), or ``from_pretrained``. ``attribute``
    never touches LeRobot's action queue: it runs ``policy.model`` directly, as ``step_batch`` does.
    """

    def __init__(self, engine: Introspector, config: SaliencyConfig | None = None):
        self.engine = engine
        self.config = config or SaliencyConfig()
        pcfg = engine.policy.config
        for name, value, size, what in (
            ("action_step", self.config.action_step, int(pcfg.chunk_size), "chunk steps"),
            ("action_dim", self.config.action_dim, engine.action_dim, "action dimensions"),
        ):
            if value is not None and value >= size:
                raise UsageError(f"saliency {name}={value} but the policy has {size} {what} (0 .. {size - 1})")
        self.inputs: list[str] = list(engine.camera_names)
        if engine.state_dim:
            self.inputs.append("observation.state")
        if engine.env_state_dim:
            self.inputs.append("observation.environment_state")

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str,
        config: SaliencyConfig | None = None,
        engine_config: IntrospectionConfig | None = None,
    ) -> IntegratedGradients:
        return cls(Introspector.from_pretrained(path_or_repo_id, engine_config), config)

    # ------------------------------------------------------------------ the scalar
    def target(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, T, A) normalised action chunks -> (B,) the number whose gradient is attributed."""
        cfg = self.config
        sel = actions
        if cfg.action_step is not None:
            sel = sel[:, cfg.action_step : cfg.action_step + 1]
        if cfg.action_dim is not None:
            sel = sel[:, :, cfg.action_dim : cfg.action_dim + 1]
        flat = sel.to(torch.promote_types(sel.dtype, torch.float32)).flatten(1)  # half types: in float32
        return flat.sum(1) if cfg.aggregation == "sum" else flat.norm(dim=1)

    def _forward(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw batched inputs (what ``observation_to_dict`` gives, stacked) -> (B,) targets, differentiable."""
        batch = dict(self.engine.loaded.preprocessor(dict(raw)))
        dtype = next(self.engine.policy.parameters()).dtype
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        actions, _ = self.engine.adapter.forward(batch)
        return self.target(actions)

    # ------------------------------------------------------------------ attribution
    def attribute(self, observations: Sequence[Observation]) -> list[SaliencyResult]:
        """Attributions of each observation (independent frames, as ``step_batch``)."""
        if not observations:
            return []
        engine, cfg = self.engine, self.config
        param_dtype = next(engine.policy.parameters()).dtype
        work = torch.float64 if param_dtype == torch.float64 else torch.float32
        with torch.inference_mode(False), torch.no_grad():
            items = [engine.observation_to_dict(o) for o in observations]
            x = {k: torch.stack([it[k] for it in items]).to(work) for k in self.inputs}
        base = {k: torch.zeros_like(v) for k, v in x.items()}
        n, steps = len(observations), cfg.steps
        alphas = (torch.arange(steps, dtype=work, device=engine.device) + 0.5) / steps
        rows = [(b, k) for b in range(n) for k in range(steps)]
        grads = {k: torch.zeros_like(v) for k, v in x.items()}
        with torch.inference_mode(False), _inputs_only(engine.policy):
            for start in range(0, len(rows), cfg.batch_size):
                chunk = rows[start : start + cfg.batch_size]
                frame = torch.tensor([b for b, _ in chunk], device=engine.device)
                alpha = alphas[[k for _, k in chunk]]
                with torch.enable_grad():
                    path = {}
                    for key, value in x.items():
                        a = alpha.view(-1, *([1] * (value.dim() - 1)))
                        path[key] = (base[key][frame] + a * (value[frame] - base[key][frame])).requires_grad_(True)
                    out = self._forward(path)
                    g = torch.autograd.grad(out.sum(), [path[k] for k in self.inputs])
                for key, gk in zip(self.inputs, g):
                    grads[key].index_add_(0, frame, gk.to(work))
            with torch.no_grad():
                ends = self._endpoints(x, base)
        attribution = {k: ((x[k] - base[k]) * grads[k] / steps).cpu().numpy() for k in self.inputs}
        return [self._result(o, i, attribution, ends) for i, o in enumerate(observations)]

    def _endpoints(self, x: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, 2) f(x) and f(x') for the completeness check, in batches of ``batch_size``."""
        n, size = next(iter(x.values())).shape[0], self.config.batch_size
        stacked = {k: torch.cat([x[k], base[k]]) for k in x}
        out = [self._forward({k: v[s : s + size] for k, v in stacked.items()}) for s in range(0, 2 * n, size)]
        both = torch.cat(out).double().cpu().numpy()
        return np.stack([both[:n], both[n:]], axis=1)

    def _result(self, obs: Observation, i: int, attribution: dict[str, np.ndarray], ends: np.ndarray) -> SaliencyResult:
        cfg = self.config
        attr = {k: v[i] for k, v in attribution.items()}
        cameras = self.engine.camera_names
        maps = {k: np.abs(attr[k]).mean(axis=0).astype(np.float32) for k in cameras}
        state = float(np.abs(attr["observation.state"]).mean()) if "observation.state" in attr else None
        display, state_display = normalise(maps, state, cfg.normalisation, cfg.percentile)
        mass = {k: float(np.abs(v).sum()) for k, v in attr.items()}
        total = sum(mass.values())
        shares = {k: (m / total if total > 0 else 0.0) for k, m in mass.items()}
        target, baseline = float(ends[i, 0]), float(ends[i, 1])
        gap = float(sum(float(v.sum(dtype=np.float64)) for v in attr.values()) - (target - baseline))
        return SaliencyResult(
            timestamp=float(obs.timestamp),
            frame_index=obs.frame_index,
            episode_index=obs.episode_index,
            attribution=attr,
            maps=maps,
            display=display,
            state_saliency=state_display,
            shares=shares,
            target=target,
            baseline_target=baseline,
            completeness_gap=gap,
        )


def render_saliency(
    obs: Observation, result: SaliencyResult, config: OverlayConfig | None = None
) -> dict[str, np.ndarray]:
    """One RGB overlay per camera at the camera's own resolution: the display map as a heatmap (opacity follows
    it where ``config.weighted``), a bar on the left whose height is the state's saliency, and a label with the
    camera's and the state's share of the attribution."""
    from .overlay import _draw_label, _draw_state_bar

    config = config or OverlayConfig()
    out = {}
    for name, heat in result.display.items():
        image = obs.images.get(name)
        if image is None:
            image = obs.images[camera_short(name)]
        img = heatmap_overlay(image, heat, config.colormap, config.alpha, weighted=config.weighted)
        bar = 0
        if config.state_bar and "observation.state" in result.shares:
            _draw_state_bar(img, result.state_saliency)
            bar = max(6, img.shape[1] // 64) + 1
        if config.label:
            _draw_label(
                img,
                f"{camera_short(name)} IG {100 * result.shares.get(name, 0.0):.0f}%"
                f" state {100 * result.shares.get('observation.state', 0.0):.0f}%",
                left=bar,
            )
        out[name] = img
    return out


__all__ = [
    "AGGREGATIONS",
    "NORMALISATIONS",
    "IntegratedGradients",
    "SaliencyConfig",
    "SaliencyResult",
    "normalise",
    "render_saliency",
]
