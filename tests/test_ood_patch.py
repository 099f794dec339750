"""``patch_knn``: the state-conditioned patch score, on constructed patch grids and through the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pai_core import ModelError
from pai_core.ood import auroc, score_episodes
from pai_core.ood.patch_knn import PatchKnnConfig, PatchKnnScorer, patch_grid
from pai_core.pipeline import Pipeline
from pai_core.sources.dataset import iter_episode, open_dataset
from pai_core.testing import make_lerobot_dataset


def scene(t: int, episodes: int = 4, frames: int = 10, noise: float = 0.05, seed: int = 0):
    """Patch grids where what the camera sees depends on the joint state: state t shows pattern t
    (shared by all episodes, plus a little noise)."""
    patterns = torch.randn(frames, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    grids = torch.stack([patterns[i % frames] for i in range(episodes * frames)])
    grids = grids + noise * torch.randn(grids.shape, generator=g)
    states = np.asarray([[float(i % frames)] for i in range(episodes * frames)], np.float32)
    return grids, states, np.repeat(np.arange(episodes), frames), patterns[t]


def identity_maps(grid: torch.Tensor) -> list[torch.Tensor]:
    """``score`` takes backbone maps; one map on the grid's own size passes through ``patch_grid`` as a
    3x3 average, so the reference is built from the same transform."""
    return [grid]


def fitted(k: int = 3, nb: int = 3):
    grids, states, eps, _ = scene(0)
    cfg = PatchKnnConfig(k_frames=k, neighbourhood=nb, max_grid=(6, 8))
    return PatchKnnScorer.from_grids({"cam": patch_grid([grids], cfg.max_grid)}, states, eps, cfg), cfg


def score_of(scorer, grid, state):
    scores, maps, _ = scorer.score_maps({"cam": identity_maps(grid[None])}, np.asarray([[state]], np.float32))
    return float(scores[0]), maps["cam"][0]


def test_a_frame_is_judged_against_the_reference_frames_of_its_own_joint_state():
    scorer, _ = fitted()
    pattern = scene(3)[3]
    ok, ok_map = score_of(scorer, pattern, 3.0)
    wrong_state, _ = score_of(scorer, pattern, 7.0)  # the camera shows state 3 while the joints say 7
    assert ok < 1.0 < wrong_state  # 1.0: the 99th percentile of clean frames
    assert ok_map.shape == (6, 8)


def test_a_patch_may_move_within_the_neighbourhood_but_not_beyond():
    scorer, _ = fitted(nb=3)
    pattern = scene(5)[3]
    base, _ = score_of(scorer, pattern, 5.0)
    one, one_map = score_of(scorer, torch.roll(pattern, 1, dims=-1), 5.0)
    three, three_map = score_of(scorer, torch.roll(pattern, 3, dims=-1), 5.0)
    # one cell: every patch but the wrapped-around column still finds its twin next to it
    assert np.median(one_map[:, 1:]) < 1.0 and base < 1.0
    assert np.median(three_map[:, 3:]) > 3.0 and three > one


def test_a_local_change_lights_up_its_own_patches_in_the_map():
    scorer, _ = fitted()
    pattern = scene(2)[3].clone()
    pattern[:, 2:4, 5:7] += 3.0  # a new object in four cells
    score, zmap = score_of(scorer, pattern, 2.0)
    assert score > 1.0
    hot = np.unravel_index(np.argmax(zmap), zmap.shape)
    assert 1 <= hot[0] <= 4 and 4 <= hot[1] <= 7  # the 3x3 averaging spreads it by one cell


def test_saved_reference_scores_the_same_and_names_what_does_not_fit(tmp_path):
    scorer, _ = fitted()
    pattern = scene(4)[3]
    path = scorer.save_file(tmp_path / "ref.safetensors")
    loaded = PatchKnnScorer.load_file(path)
    assert score_of(loaded, pattern, 4.0)[0] == pytest.approx(score_of(scorer, pattern, 4.0)[0], rel=1e-3)
    with pytest.raises(ModelError, match="lacks"):
        loaded.score_maps({"other": [pattern[None]]}, np.zeros((1, 1), np.float32))
    with pytest.raises(ModelError, match="recalibrate"):
        loaded.score_maps({"cam": [torch.zeros(1, 5, 6, 8)]}, np.zeros((1, 1), np.float32))
    with pytest.raises(ModelError, match="ref.txt"):
        PatchKnnScorer.load_file(tmp_path / "ref.txt")


def test_one_episode_cannot_give_the_leave_one_episode_out_statistics():
    grids, states, _, _ = scene(0, episodes=1)
    with pytest.raises(ValueError, match="two episodes"):
        PatchKnnScorer.from_grids({"cam": grids}, states, np.zeros(len(states)))


# ------------------------------------------------------------------------------ the real pipeline
def test_patch_knn_through_the_pipeline_finds_a_recoloured_object_and_maps_it(ood_world, calibrate_copy, tmp_path):
    base, policy, held_eps = ood_world
    sae, params = calibrate_copy("patch_knn")
    assert params.score == "patch_knn" and params.reference_path.is_file() and params.episodes == held_eps
    blue = make_lerobot_dataset(
        tmp_path / "blue",
        cameras={"observation.images.front": (96, 128)},
        episodes=2,
        frames=20,
        seed=13,
        variant="blue",
    )
    pipe = Pipeline.load(str(policy), str(sae))
    fresh = np.concatenate(
        [e.scores for e in score_episodes(pipe, open_dataset("pai/synthetic", base / "fresh"), progress=False)]
    )
    moved = np.concatenate([e.scores for e in score_episodes(pipe, blue, progress=False)])
    assert auroc(fresh, moved) > 0.95 and np.mean(moved > params.threshold) > 0.9
    assert np.mean(fresh > params.threshold) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / fresh.size)
    frame = pipe.step_batch([next(iter_episode(blue, 0))])[0]
    assert frame.ood_maps["observation.images.front"].shape == (12, 16)  # ResNet layer2 grid of 96x128
