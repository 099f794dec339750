"""Feature statistics over recorded frames, computed from the sparse Parquet columns without a dense
(frames x features) matrix: what to look at first, which features are dead or always on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..configs import RANK_BY
from ..errors import ConfigError, ObservationError

if TYPE_CHECKING:
    import pyarrow as pa

RankBy = Literal["variance", "frequency", "mean", "max"]  # RANK_BY


@dataclass
class FeatureStats:
    """Per-feature statistics over N recorded frames (absent = 0).

    Args:
        n_frames: N.
        count: (n_latents,) frames in which the feature is active.
        frequency: (n_latents,) count / N.
        mean: (n_latents,) mean activation over all frames.
        variance: (n_latents,) population variance of the activation over all frames.
        max: (n_latents,) largest activation.
    """

    n_frames: int
    count: np.ndarray
    frequency: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    max: np.ndarray

    @property
    def dead(self) -> np.ndarray:
        """Features never active in any recorded frame."""
        return np.flatnonzero(self.count == 0)

    def always_on(self, threshold: float) -> np.ndarray:
        """Features active in at least ``threshold`` of the frames."""
        return np.flatnonzero(self.frequency >= threshold)

    def row(self, feature: int) -> dict:
        return {
            "count": int(self.count[feature]),
            "frequency": float(self.frequency[feature]),
            "mean": float(self.mean[feature]),
            "variance": float(self.variance[feature]),
            "std": float(np.sqrt(self.variance[feature])),
            "max": float(self.max[feature]),
        }


def flat_activations(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, feature, value) arrays of every stored activation of the table."""
    idx = table.column("feature_indices").combine_chunks()
    val = table.column("feature_values").combine_chunks()
    lengths = idx.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return (
        rows,
        idx.flatten().to_numpy(zero_copy_only=False).astype(np.int64),
        val.flatten().to_numpy(zero_copy_only=False).astype(np.float32),
    )


def feature_stats(table: pa.Table, n_latents: int) -> FeatureStats:
    """Statistics of every feature over the table's frames."""
    n = table.num_rows
    if n == 0:
        raise ObservationError("the recording has no frames")
    _, feat, val = flat_activations(table)
    if feat.size and (feat.max() >= n_latents or feat.min() < 0):
        raise ObservationError(f"recorded feature index {int(feat.max())} is outside 0..{n_latents - 1}")
    v64 = val.astype(np.float64)
    count = np.bincount(feat, minlength=n_latents)
    total = np.bincount(feat, weights=v64, minlength=n_latents)
    total_sq = np.bincount(feat, weights=v64 * v64, minlength=n_latents)
    mx = np.zeros(n_latents, np.float64)
    np.maximum.at(mx, feat, v64)
    mean = total / n
    variance = np.maximum(total_sq / n - mean * mean, 0.0)
    return FeatureStats(n, count, count / n, mean, variance, mx)


def rank_features(
    stats: FeatureStats,
    rank_by: RankBy = "variance",
    always_on: float = 0.99,
    include_always_on: bool = False,
) -> np.ndarray:
    """Feature ids, most interesting first; dead features (and always-on ones, unless included) left out."""
    if rank_by not in RANK_BY:
        raise ConfigError(f"rank_by={rank_by!r} is not one of {list(RANK_BY)}")
    keep = stats.count > 0
    if not include_always_on:
        keep &= stats.frequency < always_on
    ids = np.flatnonzero(keep)
    score = getattr(stats, rank_by)[ids]
    return ids[np.lexsort((ids, -score))]  # descending score, ties by feature id


def top_frames(table: pa.Table, feature: int, k: int, min_gap: int = 0) -> list[tuple[int, float]]:
    """The ``k`` table rows where ``feature`` is strongest, as (row, activation), highest first.

    ``min_gap`` > 0 skips frames within that many frames of an already chosen one in the same episode
    (neighbouring frames of a slow scene are near duplicates).
    """
    rows, feat, val = flat_activations(table)
    hit = feat == feature
    rows, val = rows[hit], val[hit]
    order = np.lexsort((rows, -val))
    if min_gap <= 0:
        return [(int(rows[i]), float(val[i])) for i in order[:k]]
    episodes = table.column("episode_index").to_numpy()
    frames = table.column("frame_index").to_numpy()
    chosen: list[tuple[int, float]] = []
    for i in order:
        r = int(rows[i])
        if any(episodes[c] == episodes[r] and abs(int(frames[c]) - int(frames[r])) < min_gap for c, _ in chosen):
            continue
        chosen.append((r, float(val[i])))
        if len(chosen) == k:
            break
    return chosen


def recorded_peak(
    table: pa.Table, row: int, feature: int, group: str, fields: tuple[str, ...] = ("row", "col")
) -> dict | None:
    """Recorded peak of ``feature`` in one frame within a column group (a camera's short name, or
    "nonimage" with ``fields=("token",)``): {"value", *fields}, or None where it is not active."""
    feats = table.column(f"{group}.feature")[row].values.to_numpy()
    hit = np.flatnonzero(feats == feature)
    if hit.size == 0:
        return None
    j = int(hit[0])
    out = {"value": float(table.column(f"{group}.value")[row].values.to_numpy()[j])}
    for name in fields:
        out[name] = int(table.column(f"{group}.{name}")[row].values.to_numpy()[j])
    return out
