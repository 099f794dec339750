"""patch_knn's joint-state search in blocks of reference frames: the same neighbours, bit for bit, whatever
the block size, with ties broken by the lower reference index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pai_core.ood.patch_knn import PatchKnnConfig, PatchKnnScorer, nearest_states

CHUNKS = [None, 1, 7, 64, 333, 5000]


def states_with_ties(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 6) states where a third repeat earlier rows exactly (a robot at rest), and their episodes."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(n, 6)).astype(np.float32)
    repeat = rng.choice(n, n // 3, replace=False)
    states[repeat] = states[rng.integers(0, n // 3, n // 3)]
    return torch.from_numpy(states), torch.from_numpy(np.arange(n) // 50)


def test_blocked_search_equals_one_block_for_every_chunk_with_and_without_leaving_episodes_out():
    ref, episodes = states_with_ties()
    queries = torch.cat([ref[::37], torch.randn(10, 6)])  # exact twins of reference rows, and new states
    query_episodes = torch.cat([episodes[::37], torch.full((10,), 3)])
    for exclude in (None, query_episodes):
        ref_eps = None if exclude is None else episodes
        base_i, base_d = nearest_states(queries, ref, 16, None, exclude, ref_eps)
        for chunk in CHUNKS[1:]:
            idx, dist = nearest_states(queries, ref, 16, chunk, exclude, ref_eps)
            assert torch.equal(idx, base_i), f"chunk {chunk}, exclude {exclude is not None}"
            assert torch.equal(dist, base_d)
        if exclude is not None:
            assert not (episodes[base_i] == exclude[:, None]).any(), "a left-out episode's frame was a neighbour"


def test_neighbours_are_nearest_first_with_ties_to_the_lower_index():
    ref, _ = states_with_ties(seed=1)
    queries = ref[:40]
    d = torch.cdist(queries, ref, compute_mode="donot_use_mm_for_euclid_dist").numpy()
    idx, dist = nearest_states(queries, ref, 8, chunk=50)
    for row in range(len(queries)):
        expected = np.lexsort((np.arange(len(ref)), d[row]))[:8]  # by distance, then by index
        assert idx[row].tolist() == expected.tolist()
        assert np.array_equal(dist[row].numpy(), d[row][expected])
    twins = torch.zeros(6, 3)
    assert nearest_states(torch.zeros(1, 3), twins, 3, chunk=2)[0].tolist() == [[0, 1, 2]]


def test_scorer_scores_identically_with_any_search_chunk():
    rng = np.random.default_rng(2)
    n, cams = 120, ("observation.images.front", "observation.images.wrist")
    grids = {cam: torch.from_numpy(rng.normal(size=(n, 8, 6, 8)).astype(np.float32)) for cam in cams}
    states, episodes = states_with_ties(n, seed=2)
    scorer = PatchKnnScorer.from_grids(grids, states.numpy(), episodes.numpy(), PatchKnnConfig(k_frames=5))
    maps = {cam: [torch.from_numpy(rng.normal(size=(4, 8, 6, 8)).astype(np.float32))] for cam in cams}
    probe = states[[3, 50, 51, 90]].numpy()
    results = []
    for chunk in (None, 1, 13):
        scorer.search_chunk = chunk
        results.append(scorer.score_maps(maps, probe))
    for other in results[1:]:
        assert np.array_equal(other.scores, results[0].scores)
        assert np.array_equal(other.coverage, results[0].coverage)
        assert all(np.array_equal(other.maps[c], results[0].maps[c]) for c in cams)
    assert np.isfinite(results[0].scores).all()


def test_search_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk=0 must be >= 1"):
        nearest_states(torch.zeros(1, 2), torch.zeros(3, 2), 1, chunk=0)
