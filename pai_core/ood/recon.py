"""SAE reconstruction scores: ``sae_recon_mse`` (the mean token error, the seed's idea per token) and
``sae_recon_z`` (each token position's error standardised by its clean mean and spread)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ModelError, UsageError
from .params import OODParams
from .registry import register
from .scorer import FitJob, Fitted, Scale, ScoreBatch, ScoreOutput


def frame_scores(token_error: np.ndarray, params: OODParams | None = None) -> np.ndarray:
    """(B, S) per-token reconstruction error -> (B,) frame scores (mean error without params or for
    ``sae_recon_mse``; the standardised mean for ``sae_recon_z``)."""
    if params is None or params.score == "sae_recon_mse":
        return token_error.mean(axis=1)
    if params.score != "sae_recon_z":
        raise ValueError(f"{params.score} scores do not come from reconstruction errors")
    mean, std = np.asarray(params.token_mean), np.asarray(params.token_std)
    if mean.size != token_error.shape[1]:
        raise ModelError(
            f"ood_params.json standardises {mean.size} token positions but the policy produced "
            f"{token_error.shape[1]} tokens; recalibrate with `pai calibrate-ood` for this input size"
        )
    return ((token_error - mean) / std).mean(axis=1)


def fit_token_standardizer(token_error: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-position mean and spread of (N, S) clean-frame token errors; the spread is floored at 1 % of
    its median so a position that barely varies cannot dominate the score."""
    mean = token_error.mean(axis=0)
    std = token_error.std(axis=0)
    std = np.maximum(std, 0.01 * float(np.median(std)) + 1e-12)
    return mean.tolist(), std.tolist()


def _error_maps(batch: ScoreBatch) -> list[dict[str, np.ndarray]]:
    from ..features import error_maps

    return error_maps(batch.token_error, batch.results[0].layout)


@register
class ReconMse:
    """``sae_recon_mse``: mean token reconstruction error; needs no reference and no joint states."""

    name: ClassVar[str] = "sae_recon_mse"
    description: ClassVar[str] = "mean token reconstruction error"
    needs_vision_features: ClassVar[bool] = False

    @classmethod
    def fit(cls, job: FitJob) -> Fitted:
        return Fitted(cls(), list(job.episodes))

    @classmethod
    def load(cls, params: OODParams) -> ReconMse:
        return cls()

    def save(self, folder: Path) -> dict:
        return {}

    def score(self, batch: ScoreBatch) -> ScoreOutput:
        return ScoreOutput(batch.token_error.mean(axis=1).astype(np.float64), _error_maps(batch))

    def leaving_out(self, episode: int | None) -> AbstractContextManager[ReconMse]:
        return nullcontext(self)

    def reset(self) -> None:
        pass

    def describe(self) -> dict:
        return {}

    def map_scale(self, threshold: float) -> Scale | None:
        """Token errors, scored by their mean: full heat at twice the threshold (a token at the alarming
        mean error shows at half heat)."""
        return (0.0, 2.0 * threshold) if threshold > 0 else None


@register
class ReconZ:
    """``sae_recon_z``: the mean of per-position standardised token errors. The standardiser is fitted on
    a quarter of the calibration episodes; the threshold is set on the others, which it never saw."""

    name: ClassVar[str] = "sae_recon_z"
    description: ClassVar[str] = "mean of per-position standardised token reconstruction errors"
    needs_vision_features: ClassVar[bool] = False

    def __init__(self, token_mean: Sequence[float] | np.ndarray, token_std: Sequence[float] | np.ndarray):
        self.params = OODParams(threshold=0.0, score=self.name, token_mean=list(token_mean), token_std=list(token_std))

    @classmethod
    def fit(cls, job: FitJob) -> Fitted:
        from .evaluate import score_episodes

        if len(job.episodes) < 2:
            raise UsageError(
                f"--score {cls.name} needs at least two calibration episodes (a quarter fit the "
                f"standardiser, the others set the threshold); got {job.episodes}"
            )
        n_fit = max(1, len(job.episodes) // 4)
        fit_eps = score_episodes(job.pipe, job.dataset, job.episodes[:n_fit], job.batch_size)
        mean, std = fit_token_standardizer(np.concatenate([e.token_error for e in fit_eps]))
        return Fitted(cls(mean, std), list(job.episodes[n_fit:]))

    @classmethod
    def load(cls, params: OODParams) -> ReconZ:
        return cls(params.token_mean, params.token_std)

    def save(self, folder: Path) -> dict:
        return {"token_mean": self.params.token_mean, "token_std": self.params.token_std}

    def score(self, batch: ScoreBatch) -> ScoreOutput:
        return ScoreOutput(frame_scores(batch.token_error, self.params).astype(np.float64), _error_maps(batch))

    def leaving_out(self, episode: int | None) -> AbstractContextManager[ReconZ]:
        return nullcontext(self)

    def reset(self) -> None:
        pass

    def describe(self) -> dict:
        return {"token_positions": len(self.params.token_mean)}

    def map_scale(self, threshold: float) -> Scale | None:
        """Full heat at twice the raw error of an average token (mean token_mean and token_std) at
        z = threshold."""
        p = self.params
        high = 2.0 * (float(np.mean(p.token_mean)) + threshold * float(np.mean(p.token_std)))
        return (0.0, high) if high > 0 else None


def fit_episode_count(score: str, frames: list[int]) -> list[int]:
    """Frames per episode of the calibration episodes whose scores set the threshold (for the alpha check
    before any work): all of them, except the quarter ``sae_recon_z`` fits its standardiser on."""
    if score == ReconZ.name and len(frames) >= 2:
        return frames[max(1, len(frames) // 4) :]
    return frames
