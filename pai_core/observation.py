"""The one thing every source produces: camera images and state at one instant."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def camera_short(feature: str) -> str:
    """The short name of a policy camera: the last part of its image feature name
    (``observation.images.front`` -> ``front``). The one rule for what an observation's images may be keyed
    by, what the node's per-camera topics and replay's per-camera files and columns are called."""
    return feature.rsplit(".", 1)[-1]


@dataclass
class Observation:
    """Camera images and robot state at one instant, as a source produced them.

    Args:
        images: camera images by policy image feature name (``observation.images.front``) or by its
            short name (``front``, ``camera_short``); each uint8 of shape (H, W, 3), RGB, any resolution.
        state: robot state vector (``observation.state``), in the policy's joint order, real units.
        timestamp: seconds (stamp of the newest input; ROS time or dataset time).
        env_state: optional ``observation.environment_state`` vector.
        frame_index: optional index of the frame in its episode or bag (for replay outputs).
        episode_index: optional episode the frame belongs to.
        stamp_ns: the header stamp in integer nanoseconds where a source has one (the live node: the newest
            input's stamp, copied to every output exactly); ``timestamp`` is the same instant in seconds.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray | None = None
    timestamp: float = 0.0
    env_state: np.ndarray | None = None
    frame_index: int = -1
    episode_index: int = -1
    extra: dict = field(default_factory=dict)
    stamp_ns: int | None = None
