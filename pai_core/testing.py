"""Small random-init ACT policies saved as real LeRobot ``pretrained_model`` folders.

For tests, benchmarks and pipelines that need a policy without hub access. The weights are random
(``pretrained_backbone_weights=None``); saving and loading go through LeRobot's own ``save_pretrained``
and ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .policy import import_lerobot_policies

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset


def make_act_policy(
    out_dir: str | Path,
    cameras: dict[str, tuple[int, int]] | None = None,
    state_dim: int = 6,
    action_dim: int = 6,
    dim_model: int = 64,
    n_heads: int = 4,
    dim_feedforward: int = 128,
    n_encoder_layers: int = 2,
    chunk_size: int = 10,
    n_action_steps: int = 10,
    temporal_ensemble_coeff: float | None = None,
    env_state_dim: int = 0,
    seed: int = 0,
    stats: dict | None = None,
) -> Path:
    """Create, save and return the path of a random-init ACT policy with its processors.

    Args:
        cameras: policy image feature name -> (H, W); default one 96x128 camera "observation.images.front".
        stats: normalisation statistics by feature; default zero-mean unit-std for state and action and
            ImageNet statistics for images.
    """
    import_lerobot_policies()
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    cameras = {"observation.images.front": (96, 128)} if cameras is None else cameras
    inputs = {k: PolicyFeature(FeatureType.VISUAL, (3, h, w)) for k, (h, w) in cameras.items()}
    if state_dim:
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    if env_state_dim:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (env_state_dim,))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    torch.manual_seed(seed)
    cfg = ACTConfig(
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        dim_model=dim_model,
        n_heads=n_heads,
        dim_feedforward=dim_feedforward,
        n_encoder_layers=n_encoder_layers,
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        temporal_ensemble_coeff=temporal_ensemble_coeff,
        device="cpu",
    )
    policy = ACTPolicy(cfg)
    if stats is None:
        rng = np.random.default_rng(seed)
        stats = {
            k: {
                "mean": np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1),
                "std": np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1),
            }
            for k in cameras
        }
        for key, dim in (
            ("observation.state", state_dim),
            ("observation.environment_state", env_state_dim),
            ("action", action_dim),
        ):
            if dim:
                stats[key] = {"mean": rng.normal(size=dim), "std": 0.5 + rng.random(dim)}
    stats = {
        k: {s: torch.as_tensor(np.asarray(v), dtype=torch.float32) for s, v in d.items()} for k, d in stats.items()
    }
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    return out_dir


def synthetic_frame(h: int, w: int, t: float, variant: str = "clean", seed: int = 0) -> np.ndarray:
    """A table-top-like RGB image with a red block that moves with ``t`` in [0, 1].

    ``variant`` makes named out-of-distribution versions: "dark" (lighting), "blue" (object colour),
    "occluded" (a grey patch over the middle), "noise" (sensor noise).
    """
    rng = np.random.default_rng(seed)
    img: np.ndarray = np.empty((h, w, 3), np.uint8)
    img[:] = (150, 140, 120)
    img[: h // 3] = (90, 110, 140)  # wall
    img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    size = max(4, h // 6)
    cy = int(h * 0.6)
    cx = int((0.15 + 0.7 * t) * (w - size))
    color = (200, 30, 30) if variant != "blue" else (30, 60, 210)
    img[cy : cy + size, cx : cx + size] = color
    if variant == "dark":
        img = (img * 0.35).astype(np.uint8)
    elif variant == "occluded":
        img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (128, 128, 128)
    elif variant == "noise":
        img = np.clip(img.astype(np.int16) + rng.integers(-60, 61, img.shape), 0, 255).astype(np.uint8)
    return img


def make_lerobot_dataset(
    root: str | Path,
    repo_id: str = "pai/synthetic",
    cameras: dict[str, tuple[int, int]] | None = None,
    state_dim: int = 6,
    action_dim: int = 6,
    episodes: int = 2,
    frames: int = 20,
    fps: int = 10,
    use_videos: bool = False,
    variant: str = "clean",
    seed: int = 0,
    state_names: Sequence[str] | None = None,
    state_shift: Callable[[int, int], float] | None = None,
) -> LeRobotDataset:
    """Create a real LeRobotDataset v3 on disk (``root`` must not exist) and return it finalised.

    Args:
        use_videos: encode the cameras as video (LeRobot's default codec, AV1), as real recordings are.
        state_names: names of the joint-state values (default ``j0`` ...), e.g. SO-101's ``shoulder_pan.pos``.
        state_shift: (episode, frame) -> a value added to every joint of that frame's state and action,
            to make states that other episodes never visit.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    cameras = {"observation.images.front": (96, 128)} if cameras is None else cameras
    kind = "video" if use_videos else "image"
    features = {
        k: {"dtype": kind, "shape": (h, w, 3), "names": ["height", "width", "channels"]}
        for k, (h, w) in cameras.items()
    }
    names = list(state_names) if state_names is not None else [f"j{i}" for i in range(state_dim)]
    if len(names) != state_dim:
        raise ValueError(f"state_names has {len(names)} names for state_dim={state_dim}")
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": names}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": (names * action_dim)[:action_dim]}
    ds = LeRobotDataset.create(repo_id, fps, features, root=root, use_videos=use_videos)
    rng = np.random.default_rng(seed)
    for ep in range(episodes):
        phase = rng.random()
        for i in range(frames):
            t = (i / max(frames - 1, 1) + phase) % 1.0
            state = np.sin(np.arange(state_dim) + 6.28 * t).astype(np.float32)
            if state_shift is not None:
                state = state + np.float32(state_shift(ep, i))
            frame: dict[str, np.ndarray | str] = {
                k: synthetic_frame(h, w, t, variant, seed=seed * 1000 + ep * 100 + i) for k, (h, w) in cameras.items()
            }
            frame["observation.state"] = state
            frame["action"] = (
                np.roll(state, 1)[:action_dim].astype(np.float32)
                if action_dim <= state_dim
                else np.resize(state, action_dim).astype(np.float32)
            )
            frame["task"] = "push the red block"
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return LeRobotDataset(repo_id, root=root)
