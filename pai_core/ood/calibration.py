"""What ``pai calibrate-ood`` decides before and after scoring: which episodes calibrate (the SAE's held-out
ones), which frames form a kNN score's reference, and which calibration frames its reference does not
cover. The scoring itself is ``evaluate.score_episodes``; the threshold, ``conformal.calibrate``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .evaluate import EpisodeScores, frame_ranges

log = logging.getLogger(__name__)


def default_episodes(sae_extra: dict[str, Any], dataset: Any) -> list[int] | None:
    """The SAE's held-out episodes when ``dataset`` is the one it was trained on (calibrating on training
    frames would set the threshold too low)."""
    same_root = (
        sae_extra.get("dataset_root") and Path(sae_extra["dataset_root"]).resolve() == Path(dataset.root).resolve()
    )
    if same_root and sae_extra.get("held_out_episodes"):
        return list(sae_extra["held_out_episodes"])
    return None


def reference_set(
    sae_extra: dict[str, Any],
    dataset: Any,
    calibration_episodes: Sequence[int],
    score: str,
    reference_root: str | None = None,
    reference_episodes: Sequence[int] | None = None,
    stride: int = 1,
    repo_id: str = "",
) -> tuple[Any, list[int]]:
    """(reference dataset, its episodes) of a kNN score. Default: the SAE's training dataset and episodes
    (``sae_extra``: its config's ``extra``), plus for ``patch_knn`` the calibration episodes (which its ``fit``
    then scores with their own frames left out). ``repo_id`` names the reference dataset when the SAE does not."""
    from ..sources.dataset import open_dataset, select_episodes

    root = reference_root or sae_extra.get("dataset_root")
    if not root:
        raise UsageError(f"--score {score} needs --reference-root (the SAE does not record its training dataset)")
    if stride < 1:
        raise UsageError(f"--reference-stride {stride} must be at least 1")
    ref = (
        dataset
        if Path(root).resolve() == Path(dataset.root).resolve()
        else open_dataset(sae_extra.get("dataset") or repo_id, root)
    )
    episodes = list(reference_episodes or [])
    if not episodes and not reference_root:  # the SAE's training episodes, never its held-out ones
        held = set(sae_extra.get("held_out_episodes") or [])
        episodes = sae_extra.get("train_episodes") or [e for e in range(ref.meta.total_episodes) if e not in held]
    episodes = select_episodes(ref, episodes)
    if ref is dataset and score == "patch_knn" and not reference_episodes:
        episodes = sorted(set(episodes) | set(calibration_episodes))
    return ref, episodes


def coverage_summary(eps: Sequence[EpisodeScores]) -> dict:
    """Calibration frames outside the reference's joint-state coverage: counted, named, and warned about
    when they are more than a few (their scores say the reference is missing states, not that the frames
    are novel, so they stay out of the threshold)."""
    uncovered = {str(e.episode): frame_ranges(e.uncovered) for e in eps if e.uncovered.any()}
    n = int(sum(e.uncovered.sum() for e in eps))
    total = int(sum(e.scores.size for e in eps))
    if n:
        log.warning(
            "%d of %d calibration frames have joint states the patch_knn reference does not cover (kept out "
            "of the threshold): episode: frames %s. Add reference episodes that visit these states "
            "(--reference-episodes) for the alarm to judge them.",
            n,
            total,
            uncovered,
        )
    return {"excluded_frames": n, "frames": total, "episodes": uncovered}
