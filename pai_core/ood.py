"""OOD score from SAE reconstruction error, and its conformal calibration.

The score of a frame is the mean squared reconstruction error of its tokens (the seed's idea, per token
instead of per frame). ``ood_params.json`` holds the threshold and the calibration score distribution.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError


@dataclass
class OODParams:
    """Args:
    threshold: frames whose score exceeds it count as out of distribution.
    alpha: target false-alarm rate per frame the threshold was calibrated for.
    score: name of the score ("sae_recon_mse").
    n_calibration: calibration frames used.
    calibration_quantiles: score quantiles of the calibration frames (for plots and drift checks).
    """

    threshold: float
    alpha: float = 0.01
    score: str = "sae_recon_mse"
    n_calibration: int = 0
    calibration_quantiles: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "OODParams":
        path = Path(path)
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, TypeError, ValueError) as exc:
            raise ModelError(f"Could not load OOD parameters from {path}: {exc}") from exc


def frame_scores(token_error: np.ndarray) -> np.ndarray:
    """(B, S) per-token reconstruction error -> (B,) frame scores."""
    return token_error.mean(axis=1)


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """Split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest calibration score, so a fresh
    exchangeable in-distribution frame exceeds it with probability at most alpha."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    n = scores.size
    if n == 0:
        raise ValueError("conformal calibration needs at least one score")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must be within (0, 1)")
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if rank > n:
        raise ValueError(f"alpha={alpha} needs at least {math.ceil(1 / alpha) - 1} calibration frames, got {n}")
    return float(scores[rank - 1])


def calibrate(scores: np.ndarray, alpha: float) -> OODParams:
    scores = np.asarray(scores, dtype=np.float64)
    qs = {f"q{int(q * 1000):03d}": float(np.quantile(scores, q)) for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)}
    return OODParams(threshold=conformal_threshold(scores, alpha), alpha=alpha, n_calibration=int(scores.size),
                     calibration_quantiles=qs)
