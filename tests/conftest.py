"""Shared fixtures: small real ACT policies saved with LeRobot and loaded with ``from_pretrained``."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TWO_CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """Two cameras of different sizes, 6-D state, chunk 6 executed 3 steps at a time."""
    from pai_core.testing import make_act_policy

    return make_act_policy(tmp_path_factory.mktemp("act") / "pretrained_model", cameras=TWO_CAMERAS,
                           chunk_size=6, n_action_steps=3)


def random_observation(engine, rng: np.random.Generator, t: float = 0.0):
    from pai_core import Observation

    return Observation(
        images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in engine.image_shapes.items()},
        state=rng.normal(size=engine.state_dim).astype(np.float32),
        timestamp=t,
    )
