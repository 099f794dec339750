"""Shared fixtures: small real ACT policies saved with LeRobot and loaded with ``from_pretrained``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value within ``timeout`` seconds (polled every 50 ms), else a failure
    naming ``what`` (for tests that wait on ROS topics, services and processes)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pytest_sessionfinish(session, exitstatus):
    """Under CI a skipped test fails the run: a suite that passes by skipping (no rclpy, no Chromium, no
    colcon) has not tested what it claims."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        names = ", ".join(sorted({r.nodeid.split("::")[0] for r in skipped}))
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped ({names}); skipping is a failure under CI", red=True)
        session.exitstatus = 1


TWO_CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """Two cameras of different sizes, 6-D state, chunk 6 executed 3 steps at a time."""
    from pai_core.testing import make_act_policy

    return make_act_policy(
        tmp_path_factory.mktemp("act") / "pretrained_model", cameras=TWO_CAMERAS, chunk_size=6, n_action_steps=3
    )


def random_observation(engine, rng: np.random.Generator, t: float = 0.0):
    from pai_core import Observation

    return Observation(
        images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in engine.image_shapes.items()},
        state=rng.normal(size=engine.state_dim).astype(np.float32),
        timestamp=t,
    )


@pytest.fixture(scope="session")
def ood_world(tmp_path_factory):
    """A small ACT, an SAE trained on 6 clean episodes (2 held out), fresh clean and dark datasets
    (shared by the OOD tests)."""
    from pai_core.activations import ActivationStore, RecordConfig, record_activations, token_batches
    from pai_core.sae import TrainConfig, train_sae
    from pai_core.testing import make_act_policy, make_lerobot_dataset

    CAMERA = {"observation.images.front": (96, 128)}
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("ood")
    train_ds = make_lerobot_dataset(base / "train", cameras=CAMERA, episodes=6, frames=20, seed=0)
    make_lerobot_dataset(base / "fresh", cameras=CAMERA, episodes=3, frames=20, seed=11)
    make_lerobot_dataset(base / "dark", cameras=CAMERA, episodes=2, frames=20, seed=12, variant="dark")
    policy = make_act_policy(base / "policy", cameras=CAMERA)
    acts = base / "acts"
    record_activations(train_ds, str(policy), acts, config=RecordConfig(shard_frames=20), progress=False)
    store = ActivationStore(acts)
    train, held = store.split(0.34, seed=0)
    held_eps = sorted({store.shard_episode(s) for s in held})
    extra = {"dataset_root": str(train_ds.root), "held_out_episodes": held_eps}
    train_sae(
        token_batches(train, 256, repeat=True),
        64,
        base / "sae",
        TrainConfig(expansion_factor=4, k=8, aux_k=32, dead_tokens=5000, steps=300, batch_size=256),
        policy=str(policy),
        extra=extra,
        progress=False,
    )
    return base, policy, held_eps


def calibrate_world_copy(world, sae, score: str, *extra: str):
    """Copy ``ood_world``'s SAE to ``sae`` and run ``pai calibrate-ood --score SCORE`` on it (alpha 0.1, the
    SAE's held-out episodes, ``extra`` flags); returns its OODParams (the command's output stays captured)."""
    import shutil

    from pai_core.cli import main
    from pai_core.ood import OODParams

    base, policy, _ = world
    shutil.copytree(base / "sae", sae)
    assert (
        main(
            [
                "calibrate-ood",
                "--sae-path",
                str(sae),
                "--policy-path",
                str(policy),
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(base / "train"),
                "--alpha",
                "0.1",
                "--score",
                score,
                *extra,
            ]
        )
        == 0
    )
    return OODParams.load(sae / "ood_params.json")


@pytest.fixture
def calibrate_copy(ood_world, tmp_path, capsys):
    """``calibrate_world_copy`` into this test's folder: returns (the copy's directory, its OODParams)."""

    def calibrate(score: str):
        sae = tmp_path / f"sae_{score}"
        params = calibrate_world_copy(ood_world, sae, score)
        capsys.readouterr()
        return sae, params

    return calibrate
