"""The pictures of ``pai calibrate-ood`` (score histogram with the threshold) and ``pai evaluate-ood``
(in-distribution vs OOD histograms, every episode's score with its first alarm)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .evaluate import EpisodeScores


def plot_calibration(scores: np.ndarray, threshold: float, alpha: float, path: Path, title: str) -> Path:
    """Histogram of the calibration frames' scores with the threshold (``ood_calibration.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=50, color="#4c72b0", alpha=0.85, label=f"calibration frames (n={len(scores)})")
    ax.axvline(threshold, color="#c44e52", lw=2, label=f"threshold {threshold:.4g} (alpha={alpha:g})")
    ax.set_xlabel("OOD score")
    ax.set_ylabel("frames")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_evaluation(
    id_eps: Sequence[EpisodeScores], ood_eps: Sequence[EpisodeScores], result: dict, path: Path
) -> Path:
    """Score histograms and per-episode curves with alarms (``ood_evaluation.png``); ``result``:
    ``evaluate_episodes``' metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = result["threshold"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    id_s = np.concatenate([e.scores for e in id_eps])
    ood_s = np.concatenate([e.scores for e in ood_eps])
    bins = np.histogram_bin_edges(np.concatenate([id_s, ood_s]), bins=60)
    ax1.hist(id_s, bins=bins, alpha=0.7, color="#4c72b0", label=f"in-distribution ({id_s.size} frames)")
    ax1.hist(ood_s, bins=bins, alpha=0.7, color="#dd8452", label=f"OOD ({ood_s.size} frames)")
    ax1.axvline(thr, color="#c44e52", lw=2, label=f"threshold {thr:.4g}")
    ax1.set_xlabel("OOD score")
    ax1.set_ylabel("frames")
    ax1.set_title(
        f"AUROC {result['auroc']:.3f}, TPR {result['tpr_at_threshold']:.2f}, "
        f"FPR {result['false_positive_rate_at_threshold']:.3f}"
    )
    ax1.legend()
    for eps, color in ((id_eps, "#4c72b0"), (ood_eps, "#dd8452")):
        for e in eps:
            ax2.plot(e.scores, color=color, alpha=0.6, lw=1)
            first = np.flatnonzero(e.alarm)
            if first.size:
                ax2.plot(first[0], e.scores[first[0]], "v", color="#c44e52")
    ax2.axhline(thr, color="#c44e52", lw=1.5, ls="--")
    ax2.set_xlabel("frame in episode")
    ax2.set_ylabel("OOD score")
    ax2.set_title("episodes (blue: in-distribution, orange: OOD; v: alarm)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
