"""Clean reference frames for the kNN scores, fitted from LeRobot dataset episodes.

``fit_patch_reference`` keeps ``patch_knn`` within a memory budget: the frames to keep are chosen
before any forward pass, from the joint states in the dataset's table (``select_coverage``: the state
space stays covered, where a stride would thin every region alike), and their patch grids stream
into preallocated float16 storage (``ReferenceBuilder``), so fitting needs about the size of the
reference file in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelError, ObservationError, UsageError
from ..nuisance import NuisanceRange
from ..sources.dataset import episode_length
from .patch_knn import PatchKnnConfig, PatchKnnScorer, ReferenceBuilder, patch_grid, select_coverage
from .token_knn import KnnScorer

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from ..observation import Observation
    from ..pipeline import Frame, Pipeline
    from ..replay.runner import Segment

log = logging.getLogger(__name__)


def _kept(dataset: LeRobotDataset, episode: int, keep: np.ndarray | None) -> Iterator[Observation]:
    """The observations at the kept frame offsets of one episode, in time order (reading stops after the
    last kept one)."""
    from ..sources.dataset import iter_episode

    frames = iter_episode(dataset, episode)
    if keep is None:
        yield from frames
        return
    wanted = {int(i) for i in keep}
    for i, obs in enumerate(islice(frames, max(wanted, default=-1) + 1)):
        if i in wanted:
            yield obs


class _Collect:
    """A sink handing each batch's frames, with their segment's key (the episode), to ``add``."""

    def __init__(self, add: Callable[[int, Sequence[Frame]], None]):
        self.add, self.key = add, -1

    def begin(self, key: int) -> None:
        self.key = key

    def write(self, frames: Sequence[Frame]) -> None:
        self.add(self.key, frames)

    def close(self) -> None:
        pass


def _run_engine(
    pipe: Pipeline,
    segments: Iterable[Segment],
    add: Callable[[int, Sequence[Frame]], None],
    batch_size: int,
    total: int,
    progress: bool = True,
) -> None:
    """The engine alone (no SAE, no scorer: the reference is what they are fitted on) over ``segments``
    through the batched runner."""
    from ..replay.runner import EngineStepper, RunConfig, run_segments

    config = RunConfig(batch_size, progress=progress, desc="reference frames", rejected="raise")
    run_segments(segments, EngineStepper(pipe.engine), [_Collect(add)], config=config, total=total)


def fit_token_reference(
    pipe: Pipeline, dataset: LeRobotDataset, episodes: Sequence[int], k: int = 5, stride: int = 1, batch_size: int = 16
) -> KnnScorer:
    """``token_knn``: the encoder-input tokens of every ``stride``-th frame of ``episodes``."""
    from ..replay.runner import Segment

    tokens: list[np.ndarray] = []

    def add(_ep: int, frames: Sequence[Frame]) -> None:
        batch = [f.result.input_tokens.float().cpu().numpy() for f in frames if f.result.input_tokens is not None]
        if len(batch) < len(frames):
            raise ModelError("token_knn needs the encoder-input tokens, but the adapter captured none")
        tokens.extend(batch)

    keep = {ep: np.arange(0, episode_length(dataset, ep), stride) for ep in episodes}
    segments = (Segment(ep, _kept(dataset, ep, offsets)) for ep, offsets in keep.items())
    _run_engine(pipe, segments, add, batch_size, sum(len(k) for k in keep.values()))
    return KnnScorer.from_tokens(np.stack(tokens), k=k)


def frame_bytes(pipe: Pipeline, dataset: LeRobotDataset, episode: int, config: PatchKnnConfig) -> int:
    """Bytes one reference frame takes (every camera's float16 patch grid), from one forward pass."""
    from ..pipeline import vision_batch
    from ..replay.runner import Segment

    pipe.engine.adapter.keep_vision_features = True
    frames: list[Frame] = []
    _run_engine(pipe, [Segment(episode, _kept(dataset, episode, np.arange(1)))], lambda _, f: frames.extend(f), 1, 1)
    maps, _ = vision_batch([f.result for f in frames], [f.observation for f in frames])
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
        raise UsageError(
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
    from ..pipeline import vision_batch
    from ..replay.runner import Segment

    config = config or PatchKnnConfig()
    copies = 1 + nuisance_variants
    keep, plan = plan_patch_reference(pipe, dataset, list(episodes), config, max_bytes, stride, copies)
    pipe.engine.adapter.keep_vision_features = True
    builder = ReferenceBuilder(plan["frames"] * copies, config)
    nuisance = nuisance or NuisanceRange()
    rng = np.random.default_rng(seed)

    def batches(ep: int, offsets: np.ndarray) -> Iterator[list[Observation]]:
        """A batch of kept frames, then that batch under each of its nuisance variants."""
        frames = _kept(dataset, ep, offsets)
        while batch := list(islice(frames, batch_size)):
            yield batch
            per_frame = [nuisance.variants(nuisance_variants, rng) for _ in batch]
            for v in range(nuisance_variants):
                yield [conds[v].observe(o, seed=int(rng.integers(2**31))) for o, conds in zip(batch, per_frame)]

    def add(ep: int, frames: Sequence[Frame]) -> None:
        maps, states = vision_batch([f.result for f in frames], [f.observation for f in frames])
        builder.add(
            {cam: patch_grid([m.cpu() for m in levels], config.max_grid) for cam, levels in maps.items()}, states, ep
        )

    segments = (Segment(ep, batches=batches(ep, offsets)) for ep, offsets in keep.items())
    _run_engine(pipe, segments, add, batch_size, plan["frames"] * copies)
    plan["nuisance_variants"] = nuisance_variants
    try:
        scorer = builder.finish()
    except ValueError as exc:
        raise ObservationError(f"patch_knn reference frames: {exc}") from exc
    plan |= scorer.describe()
    return scorer, plan


__all__ = ["fit_patch_reference", "fit_token_reference", "frame_bytes", "plan_patch_reference"]
