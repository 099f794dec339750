"""Split-conformal thresholds and AUROC: the statistics behind a calibrated false-alarm rate."""

from __future__ import annotations

import math

import numpy as np

from .params import OODParams


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


def calibrate(scores: np.ndarray, alpha: float, bins: int = 50) -> OODParams:
    """Conformal threshold plus the calibration score distribution (quantiles and histogram)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    threshold = conformal_threshold(scores, alpha)
    qs = {f"q{int(q * 1000):03d}": float(np.quantile(scores, q)) for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)}
    counts, edges = np.histogram(scores, bins=bins)
    return OODParams(
        threshold=threshold,
        alpha=alpha,
        n_calibration=int(scores.size),
        calibration_quantiles=qs,
        histogram={"edges": edges.tolist(), "counts": counts.tolist()},
    )


def joint_thresholds(scores: dict[str, np.ndarray], alpha: float) -> tuple[dict[str, float], float]:
    """One false-alarm rate for several signals: each signal's scores (same frames) are divided by their own
    conformal threshold at ``alpha``, the alarm statistic is the largest of these ratios, and its conformal
    threshold tau at ``alpha`` scales every signal's threshold. A fresh clean frame then exceeds any of the
    returned thresholds with probability at most about ``alpha`` (the normalisers are fitted on the same
    frames, which makes it approximate). Returns (signal -> threshold, tau)."""
    norm = {name: max(conformal_threshold(s, alpha), 1e-12) for name, s in scores.items()}
    ratio = np.max(np.stack([np.asarray(s, np.float64) / norm[name] for name, s in scores.items()]), axis=0)
    tau = conformal_threshold(ratio, alpha)
    return {name: n * tau for name, n in norm.items()}, tau


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve = P(positive score > negative score), ties counting half
    (Mann-Whitney U from average ranks)."""
    import pandas as pd

    neg, pos = np.asarray(negatives, np.float64).ravel(), np.asarray(positives, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"AUROC needs scores of both kinds, got {neg.size} in-distribution and {pos.size} OOD")
    ranks = pd.Series(np.concatenate([neg, pos])).rank(method="average").to_numpy()
    return float((ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2) / (neg.size * pos.size))
