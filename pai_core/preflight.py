"""Checks before work: everything a dataset's metadata says is compared with what the policy and the
job need before the first forward pass, so a mismatch costs seconds, not a scored dataset.

Each check raises ``InputError`` with the fix in the message (which cameras the dataset has, how many
frames an alpha needs, which alpha the frames allow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import ObservationError, UsageError

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from .engine import Introspector


def frames_needed(alpha: float) -> int:
    """Calibration frames a split-conformal threshold at false-alarm rate ``alpha`` needs:
    ceil((n + 1)(1 - alpha)) <= n  <=>  n >= ceil(1 / alpha) - 1 (up to rounding)."""
    n = max(1, math.ceil(1.0 / alpha) - 1)
    while math.ceil((n + 1) * (1.0 - alpha)) > n:
        n += 1
    return n


def smallest_alpha(frames: int) -> float:
    """The smallest alpha that ``frames`` calibration frames allow (1 / (frames + 1)), rounded up to
    three significant digits so it can be typed."""
    alpha = 1.0 / (frames + 1)
    digits = 2 - math.floor(math.log10(alpha))
    return math.ceil(alpha * 10**digits) / 10**digits


def check_alpha(frames: int, alpha: float, what: str) -> None:
    """Refuse an ``alpha`` that ``frames`` calibration frames cannot give, before any scoring."""
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha={alpha} must be within (0, 1)")
    need = frames_needed(alpha)
    if frames < need:
        allowed = f"alpha >= {smallest_alpha(frames)}" if frames >= 1 else "no alpha"
        raise UsageError(
            f"alpha={alpha:g} needs at least {need} calibration frames, but {what} hold {frames}: "
            f"add episodes (--episodes) or use {allowed}"
        )


def episode_frames(dataset: LeRobotDataset, episodes: Sequence[int]) -> dict[int, int]:
    """Frames per episode from the metadata (no frame read)."""
    from .sources.dataset import episode_length

    return {int(ep): episode_length(dataset, ep) for ep in episodes}


def check_dataset_for_policy(
    dataset: LeRobotDataset, engine: Introspector, episodes: Sequence[int], policy_name: str = ""
) -> dict[int, int]:
    """The dataset gives every camera and the joint-state size that ``engine``'s policy needs, and the
    episodes exist and hold frames. Returns frames per episode."""
    name = f"Dataset {dataset.repo_id!r} at {dataset.root}"
    policy = f"policy {policy_name}" if policy_name else "the policy"
    have = list(dataset.meta.camera_keys)
    missing = [k for k in engine.image_shapes if k not in have]
    if missing:
        raise ObservationError(
            f"{name} lacks cameras {missing} that {policy} needs; it has {have}"
            " (record them, or use a policy trained on these cameras)"
        )
    features = dataset.meta.features
    if engine.state_dim:
        state = features.get("observation.state")
        if state is None:
            raise ObservationError(
                f"{name} has no observation.state; {policy} needs a {engine.state_dim}-value joint state"
            )
        size = int(math.prod(state["shape"]))
        if size != engine.state_dim:
            names = state.get("names")
            raise ObservationError(
                f"{name} has a {size}-value observation.state{f' {names}' if names else ''}; "
                f"{policy} needs {engine.state_dim} values"
            )
    frames = episode_frames(dataset, episodes)
    if not episodes or sum(frames.values()) == 0:
        raise UsageError(
            f"{name}: episodes {list(episodes)} hold no frames "
            f"(it has {dataset.meta.total_episodes} episodes, {dataset.meta.total_frames} frames)"
        )
    return frames


__all__ = ["check_alpha", "check_dataset_for_policy", "episode_frames", "frames_needed", "smallest_alpha"]
