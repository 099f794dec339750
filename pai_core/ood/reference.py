"""Clean reference frames for the kNN scores, fitted from LeRobot dataset episodes.

``fit_patch_reference`` keeps ``patch_knn`` within a memory budget: the frames to keep are chosen
before any forward pass, from the joint states in the dataset's table (``select_coverage``: the state
space stays covered, where a stride would thin every region alike), and their patch grids stream
into preallocated float16 storage (``ReferenceBuilder``), so fitting needs about the size of the
reference file in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, ModelError
from ..nuisance import NuisanceRange
from ..sources.dataset import episode_length
from .patch_knn import PatchKnnConfig, PatchKnnScorer, ReferenceBuilder, patch_grid, select_coverage
from .token_knn import KnnScorer

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from ..engine import FrameResult
    from ..observation import Observation
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)


def _batches(
    pipe: Pipeline, dataset: LeRobotDataset, episode: int, keep: np.ndarray | None, batch_size: int
) -> Iterator[tuple[list[Observation], list[FrameResult]]]:
    """(observations, engine results) of the kept frame offsets of one episode, a batch at a time."""
    from ..sources.dataset import iter_episode

    wanted = None if keep is None else set(int(i) for i in keep)
    frames = (o for i, o in enumerate(iter_episode(dataset, episode)) if wanted is None or i in wanted)
    while batch := list(islice(frames, batch_size)):
        yield batch, pipe.engine.step_batch(batch)


def fit_token_reference(
    pipe: Pipeline, dataset: LeRobotDataset, episodes: Sequence[int], k: int = 5, stride: int = 1, batch_size: int = 16
) -> KnnScorer:
    """``token_knn``: the encoder-input tokens of every ``stride``-th frame of ``episodes``."""
    from tqdm.auto import tqdm

    tokens = []
    for ep in tqdm(episodes, desc="reference frames", unit="ep"):
        keep = np.arange(0, episode_length(dataset, ep), stride)
        for _, results in _batches(pipe, dataset, ep, keep, batch_size):
            batch = [r.input_tokens.float().cpu().numpy() for r in results if r.input_tokens is not None]
            if len(batch) < len(results):
                raise ModelError("token_knn needs the encoder-input tokens, but the adapter captured none")
            tokens += batch
    return KnnScorer.from_tokens(np.stack(tokens), k=k)


def frame_bytes(pipe: Pipeline, dataset: LeRobotDataset, episode: int, config: PatchKnnConfig) -> int:
    """Bytes one reference frame takes (every camera's float16 patch grid), from one forward pass."""
    from ..pipeline import vision_batch

    pipe.engine.adapter.keep_vision_features = True
    batch, results = next(_batches(pipe, dataset, episode, np.arange(1), 1))
    maps, _ = vision_batch(results, batch)
    return sum(2 * patch_grid([m.cpu() for m in levels], config.max_grid)[0].numel() for levels in maps.values())


def plan_patch_reference(
    pipe: Pipeline,
    dataset: LeRobotDataset,
    episodes: Sequence[int],
    config: PatchKnnConfig,
    max_bytes: float | None,
    stride: int = 1,
    copies: int = 1,
) -> tuple[dict[int, np.ndarray], dict]:
    """Which frame offsets of each episode the reference keeps: every ``stride``-th, then, when they (with
    ``copies`` entries each: the frame and its nuisance variants) exceed ``max_bytes``, the subset that
    keeps the joint states covered. Returns (episode -> offsets, plan)."""
    from ..sources.dataset import episode_table

    tables = {ep: episode_table(dataset, ep) for ep in episodes}
    candidates = {ep: np.arange(0, len(t["frame_index"]), stride) for ep, t in tables.items()}
    total = sum(len(c) for c in candidates.values())
    per_frame = frame_bytes(pipe, dataset, episodes[0], config) * copies
    plan = {
        "candidate_frames": total,
        "bytes_per_frame": per_frame,
        "budget_bytes": max_bytes,
        "entries_per_frame": copies,
    }
    if max_bytes is None or total * per_frame <= max_bytes:
        plan["frames"] = total
        return candidates, plan
    n_keep = int(max_bytes // per_frame)
    if n_keep < 2:
        raise InputError(
            f"--reference-max-gb {max_bytes / 1e9:g} holds {n_keep} reference frames of "
            f"{per_frame / 1e6:.2f} MB; give at least {2 * per_frame / 1e9:.3f}"
        )
    if any("observation.state" not in t for t in tables.values()):
        chosen = np.linspace(0, total - 1, n_keep).round().astype(int)  # no joint states: even spacing
    else:
        states = np.concatenate([tables[ep]["observation.state"][candidates[ep]] for ep in episodes])
        chosen = select_coverage(states, n_keep)
    owner = np.concatenate([np.full(len(candidates[ep]), ep) for ep in episodes])
    offsets = np.concatenate([candidates[ep] for ep in episodes])
    keep = {ep: offsets[chosen][owner[chosen] == ep] for ep in episodes}
    plan["frames"] = int(len(chosen))
    log.info(
        "patch_knn reference: %d of %d frames (%.2f GB budget, %.2f MB a frame), chosen to cover the joint states",
        len(chosen),
        total,
        max_bytes / 1e9,
        per_frame / 1e6,
    )
    return {ep: k for ep, k in keep.items() if len(k)}, plan


def fit_patch_reference(
    pipe: Pipeline,
    dataset: LeRobotDataset,
    episodes: Sequence[int],
    config: PatchKnnConfig | None = None,
    max_bytes: float | None = None,
    stride: int = 1,
    batch_size: int = 16,
    nuisance_variants: int = 0,
    nuisance: NuisanceRange | None = None,
    seed: int = 0,
) -> tuple[PatchKnnScorer, dict]:
    """``patch_knn`` from clean reference ``episodes`` of ``dataset``: (scorer, plan with sizes).

    With ``nuisance_variants`` each kept frame also enters the reference as that many copies under camera
    nuisance drawn from ``nuisance`` (JPEG, exposure, noise, blur; seeded): a frame from a compressed
    transport or a brighter camera then finds a twin, instead of every patch looking novel."""
    from tqdm.auto import tqdm

    from ..pipeline import vision_batch

    config = config or PatchKnnConfig()
    copies = 1 + nuisance_variants
    keep, plan = plan_patch_reference(pipe, dataset, list(episodes), config, max_bytes, stride, copies)
    pipe.engine.adapter.keep_vision_features = True
    builder = ReferenceBuilder(plan["frames"] * copies, config)
    nuisance = nuisance or NuisanceRange()
    rng = np.random.default_rng(seed)
    bar = tqdm(total=plan["frames"], desc="reference frames", unit="frame")

    def add(batch: list[Observation], results: list[FrameResult], ep: int) -> None:
        maps, states = vision_batch(results, batch)
        builder.add(
            {cam: patch_grid([m.cpu() for m in levels], config.max_grid) for cam, levels in maps.items()}, states, ep
        )

    for ep, offsets in keep.items():
        for batch, results in _batches(pipe, dataset, ep, offsets, batch_size):
            add(batch, results, ep)
            per_frame = [nuisance.variants(nuisance_variants, rng) for _ in batch]
            for v in range(nuisance_variants):
                varied = [conds[v].observe(o, seed=int(rng.integers(2**31))) for o, conds in zip(batch, per_frame)]
                add(varied, pipe.engine.step_batch(varied), ep)
            bar.update(len(batch))
    bar.close()
    plan["nuisance_variants"] = nuisance_variants
    try:
        scorer = builder.finish()
    except ValueError as exc:
        raise InputError(f"patch_knn reference frames: {exc}") from exc
    plan |= scorer.describe()
    return scorer, plan


__all__ = ["fit_patch_reference", "fit_token_reference", "frame_bytes", "plan_patch_reference"]
