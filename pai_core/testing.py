"""Small random-init ACT policies saved as real LeRobot ``pretrained_model`` folders.

For tests, benchmarks and pipelines that need a policy without hub access. The weights are random
(``pretrained_backbone_weights=None``); saving and loading go through LeRobot's own ``save_pretrained``
and ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .policy import import_lerobot_policies


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
            k: {"mean": np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1), "std": np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)}
            for k in cameras
        }
        for key, dim in (("observation.state", state_dim), ("observation.environment_state", env_state_dim), ("action", action_dim)):
            if dim:
                stats[key] = {"mean": rng.normal(size=dim), "std": 0.5 + rng.random(dim)}
    stats = {k: {s: torch.as_tensor(np.asarray(v), dtype=torch.float32) for s, v in d.items()} for k, d in stats.items()}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    return out_dir
