"""patch_knn's blocked joint-state search on the GPU: the same neighbours as one block on the GPU, and as
the CPU."""

from __future__ import annotations

import pytest
import torch

from pai_core.ood.patch_knn import nearest_states
from tests.test_patch_knn_chunked import states_with_ties

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")


def test_blocked_search_on_cuda_equals_one_block_and_the_cpu():
    ref, episodes = states_with_ties(20_000)
    queries, q_eps = ref[::97], episodes[::97]
    cpu = nearest_states(queries, ref, 32, None, q_eps, episodes)
    gpu = [
        nearest_states(queries.cuda(), ref.cuda(), 32, chunk, q_eps.cuda(), episodes.cuda())
        for chunk in (None, 8192, 1000)
    ]
    for idx, dist in gpu[1:]:
        assert torch.equal(idx, gpu[0][0]) and torch.equal(dist, gpu[0][1])
    same_rows = (gpu[0][0].cpu() == cpu[0]).all(1).float().mean()
    assert float(same_rows) >= 0.99  # the devices round distances apart only where two are within an ulp
    assert torch.allclose(gpu[0][1].cpu(), cpu[1], rtol=1e-5, atol=1e-6)
