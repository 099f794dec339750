"""OOD scores and their conformal calibration.

- ``sae_recon_mse`` (default): mean SAE reconstruction error over the frame's tokens (the seed's idea,
  per token instead of per frame).
- ``sae_recon_z``: each token position's error standardised by its mean and spread on held-out clean
  frames, then averaged.
- ``token_knn``: mean squared distance of the frame's standardised encoder-input tokens to its k nearest
  clean reference frames (``KnnScorer``).
- ``patch_knn``: state-conditioned, per-patch nearest-neighbour distance of the policy's early vision
  features (``ood_patch.PatchKnnScorer``); the most sensitive, and the one the demo calibrates.
Measured on the SO-101 demo (docs/demo.md): the reconstruction scores reached AUROC 0.41-0.77 per
perturbation, token_knn 0.49-0.998, patch_knn 0.999-1.0 on all six. The reconstruction error stays the
default because it needs no reference set and no joint states.
``ood_params.json`` holds the threshold, the score's parameters and the calibration score distribution.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ModelError


@dataclass
class OODParams:
    """Args:
    threshold: frames whose score exceeds it count as out of distribution.
    alpha: target false-alarm rate per frame the threshold was calibrated for.
    score: one of ``SCORES`` (see the module docstring).
    token_mean, token_std: per token position, for "sae_recon_z".
    reference: for "token_knn" and "patch_knn", the safetensors file (beside ood_params.json) holding the
        clean reference frames (``KnnScorer`` / ``PatchKnnScorer``).
    knn_k: neighbours averaged by "token_knn".
    n_calibration: calibration frames used.
    calibration_quantiles: score quantiles of the calibration frames (for plots and drift checks).
    histogram: calibration score histogram {"edges": [...], "counts": [...]}.
    dataset: dataset the calibration frames came from.
    episodes: calibration episodes.
    coverage: "patch_knn": calibration frames whose joint state the reference does not cover, kept out of
        the threshold and named ({"excluded_frames": n, "frames": total, "episodes": {episode: "0-18"}}).
    reference_summary: "patch_knn": size of the reference (frames, MB, budget, coverage radius).
    """

    threshold: float
    alpha: float = 0.01
    score: str = "sae_recon_mse"
    n_calibration: int = 0
    calibration_quantiles: dict = field(default_factory=dict)
    histogram: dict = field(default_factory=dict)
    dataset: str = ""
    episodes: list = field(default_factory=list)
    token_mean: list = field(default_factory=list)
    token_std: list = field(default_factory=list)
    reference: str = ""
    knn_k: int = 5
    coverage: dict = field(default_factory=dict)
    reference_summary: dict = field(default_factory=dict)
    source_dir: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise ValueError(f"threshold={self.threshold!r} must be a finite number")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha!r} must be a number within (0, 1)")
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r} is not one of {list(SCORES)}")
        if self.score == "sae_recon_z" and (not self.token_mean or len(self.token_mean) != len(self.token_std)):
            raise ValueError("score 'sae_recon_z' needs token_mean and token_std of equal, non-zero length")
        if self.score in ("token_knn", "patch_knn") and not self.reference:
            raise ValueError(f"score {self.score!r} needs a reference file")

    @property
    def reference_path(self) -> Path:
        return Path(self.source_dir or ".") / self.reference

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = asdict(self)
        data.pop("source_dir")
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "OODParams":
        path = Path(path)
        try:
            params = cls(**json.loads(path.read_text()))
            params.source_dir = str(path.parent)
            return params
        except (OSError, TypeError, ValueError) as exc:
            raise ModelError(f"Could not load OOD parameters from {path}: {exc}") from exc


SCORES = {"sae_recon_mse": "mean token reconstruction error",
          "sae_recon_z": "mean of per-position standardised token reconstruction errors",
          "token_knn": "mean distance of the frame's encoder-input tokens to its k nearest clean reference frames",
          "patch_knn": "largest distance of the frame's backbone patches to those of clean frames in the nearest joint states"}


class KnnScorer:
    """``token_knn``: a frame's standardised encoder-input tokens (S*D values) against clean reference
    frames; the score is the mean squared distance to the ``k`` nearest, per value. The encoder input
    still carries what the encoder's LayerNorms remove (brightness, small local changes): on the SO-101
    demo policy it separated lighting, distractor, cube size and occlusion with AUROC 0.93-0.998 where
    the SAE reconstruction error reached 0.41-0.77 (docs/demo.md)."""

    def __init__(self, reference: np.ndarray, mean: np.ndarray, std: np.ndarray, k: int = 5):
        import torch

        self.reference = torch.as_tensor(reference, dtype=torch.float32)
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.k = min(k, self.reference.shape[0])

    @classmethod
    def fit(cls, tokens: np.ndarray, k: int = 5) -> "KnnScorer":
        """tokens: (N, S, D) encoder-input tokens of clean reference frames."""
        flat = tokens.reshape(len(tokens), -1).astype(np.float32)
        mean, std = flat.mean(0), flat.std(0) + 1e-6
        return cls((flat - mean) / std, mean, std, k)

    @classmethod
    def load(cls, params: OODParams) -> "KnnScorer":
        from safetensors.numpy import load_file

        path = params.reference_path
        try:
            data = load_file(str(path))
        except Exception as exc:
            raise ModelError(f"Could not load the token_knn reference {path}: {exc}") from exc
        return cls(data["reference"], data["mean"], data["std"], params.knn_k)

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        save_file({"reference": self.reference.numpy(), "mean": self.mean.numpy(), "std": self.std.numpy()}, str(path))
        return Path(path)

    def __call__(self, input_tokens) -> np.ndarray:
        """(B, S, D) encoder-input tokens (torch or numpy) -> (B,) scores."""
        import torch

        x = torch.as_tensor(input_tokens).detach().float().cpu().reshape(len(input_tokens), -1)
        if x.shape[1] != self.reference.shape[1]:
            raise ModelError(f"token_knn reference frames have {self.reference.shape[1]} values but the policy "
                             f"produced {x.shape[1]}; recalibrate with `pai calibrate-ood --score token_knn`")
        q = (x - self.mean) / self.std
        d = torch.cdist(q, self.reference).pow(2) / q.shape[1]
        return d.topk(self.k, dim=1, largest=False).values.mean(1).numpy().astype(np.float64)


def frame_scores(token_error: np.ndarray, params: OODParams | None = None) -> np.ndarray:
    """(B, S) per-token reconstruction error -> (B,) frame scores, by ``params.score`` (mse without params)."""
    if params is None or params.score == "sae_recon_mse":
        return token_error.mean(axis=1)
    if params.score in ("token_knn", "patch_knn"):
        raise ValueError(f"{params.score} scores come from the kNN scorers (KnnScorer, PatchKnnScorer), "
                         "not from reconstruction errors")
    mean, std = np.asarray(params.token_mean), np.asarray(params.token_std)
    if mean.size != token_error.shape[1]:
        raise ModelError(f"ood_params.json standardises {mean.size} token positions but the policy produced "
                         f"{token_error.shape[1]} tokens; recalibrate with `pai calibrate-ood` for this input size")
    return ((token_error - mean) / std).mean(axis=1)


def fit_token_standardizer(token_error: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-position mean and spread of (N, S) clean-frame token errors; the spread is floored at 1 % of
    its median so a position that barely varies cannot dominate the score."""
    mean = token_error.mean(axis=0)
    std = token_error.std(axis=0)
    std = np.maximum(std, 0.01 * float(np.median(std)) + 1e-12)
    return mean.tolist(), std.tolist()


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
    return OODParams(threshold=threshold, alpha=alpha, n_calibration=int(scores.size), calibration_quantiles=qs,
                     histogram={"edges": edges.tolist(), "counts": counts.tolist()})


# ------------------------------------------------------------------------------- scoring and evaluation
@dataclass
class EpisodeScores:
    """Per-frame OOD output of one episode, as ``Pipeline`` produced it.

    Args:
        dataset: dataset name the episode belongs to.
        episode: episode index.
        scores: (T,) frame scores.
        timestamps: (T,) seconds.
        alarm: (T,) alarm state after each frame (all False without a threshold).
        token_error: (T, S) per-token reconstruction error (what the scores are computed from).
        coverage: (T,) ``patch_knn``: joint-state distance to the reference over its coverage radius
            (above 1: not covered), else None.
    """

    dataset: str
    episode: int
    scores: np.ndarray
    timestamps: np.ndarray
    alarm: np.ndarray
    token_error: np.ndarray | None = None
    coverage: np.ndarray | None = None

    @property
    def uncovered(self) -> np.ndarray:
        """(T,) frames whose joint state the ``patch_knn`` reference does not cover (all False otherwise)."""
        return np.zeros(self.scores.shape, bool) if self.coverage is None else self.coverage > 1.0


def score_episodes(pipe, dataset, episodes: Sequence[int] | None = None, batch_size: int = 16,
                   progress: bool = True, leave_out_own_episode: bool = False) -> list[EpisodeScores]:
    """Run ``Pipeline.step_batch`` over episodes (the alarm restarts with each episode) and collect the
    frame scores; the pipeline is the only place a score is computed. With ``leave_out_own_episode``
    (calibrating on episodes that are also in the ``patch_knn`` reference) each episode is scored
    without its own reference frames."""
    from contextlib import nullcontext
    from itertools import islice

    from tqdm.auto import tqdm

    from .sources.dataset import episode_bounds, iter_episode, select_episodes

    if pipe.extractor is None:
        raise ModelError("Scoring frames needs a pipeline with an SAE (pass --sae-path)")
    episodes = select_episodes(dataset, episodes)
    total = sum(b - a for a, b in (episode_bounds(dataset, ep) for ep in episodes))
    out = []
    bar = tqdm(total=total, unit="frame", desc=f"score {dataset.repo_id}", disable=not progress)
    for ep in episodes:
        pipe.reset()
        scores, stamps, alarm, errors, coverage = [], [], [], [], []
        frames = iter_episode(dataset, ep)  # image and video datasets alike
        leave = pipe.patch_knn.leaving_out(ep) if leave_out_own_episode and pipe.patch_knn else nullcontext()
        with leave:
            while obs := list(islice(frames, batch_size)):
                for frame in pipe.step_batch(obs):
                    scores.append(frame.ood_score)
                    stamps.append(frame.observation.timestamp)
                    alarm.append(frame.alarm.active)
                    errors.append(frame.token_error)
                    coverage.append(frame.state_coverage)
                bar.update(len(obs))
        cov = None if any(c is None for c in coverage) else np.asarray(coverage, np.float64)
        out.append(EpisodeScores(str(dataset.repo_id), ep, np.asarray(scores, np.float64),
                                 np.asarray(stamps, np.float64), np.asarray(alarm, bool), np.stack(errors), cov))
    bar.close()
    return out


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve = P(positive score > negative score), ties counting half
    (Mann-Whitney U from average ranks)."""
    import pandas as pd

    neg, pos = np.asarray(negatives, np.float64).ravel(), np.asarray(positives, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"AUROC needs scores of both kinds, got {neg.size} in-distribution and {pos.size} OOD")
    ranks = pd.Series(np.concatenate([neg, pos])).rank(method="average").to_numpy()
    return float((ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2) / (neg.size * pos.size))


def frame_ranges(mask: np.ndarray) -> str:
    """(T,) bool -> the frames where it holds, as ranges ("0-18,40")."""
    hits = np.flatnonzero(mask)
    if not hits.size:
        return ""
    breaks = np.flatnonzero(np.diff(hits) > 1)
    starts, stops = np.r_[hits[0], hits[breaks + 1]], np.r_[hits[breaks], hits[-1]]
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, stops))


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def evaluate_episodes(id_eps: list[EpisodeScores], ood_eps: list[EpisodeScores], threshold: float) -> dict:
    """Detection metrics: frame AUROC, TPR and false-positive rate at ``threshold``, per in-distribution
    episode the false-alarm rate (frames above threshold) and whether the alarm rose, per OOD episode the
    detection delay (frames and seconds from the episode start to the alarm, and to the first frame above
    threshold)."""
    id_s = np.concatenate([e.scores for e in id_eps]) if id_eps else np.empty(0)
    ood_s = np.concatenate([e.scores for e in ood_eps]) if ood_eps else np.empty(0)
    per_id, per_ood = [], []
    for e in id_eps:
        first = _first(e.alarm)
        per_id.append({"dataset": e.dataset, "episode": e.episode, "frames": int(e.scores.size),
                       "false_alarm_rate": float(np.mean(e.scores > threshold)), "alarm_raised": first is not None,
                       "first_alarm_frame": first, "uncovered_frames": frame_ranges(e.uncovered)})
    for e in ood_eps:
        first, above = _first(e.alarm), _first(e.scores > threshold)
        per_ood.append({"dataset": e.dataset, "episode": e.episode, "frames": int(e.scores.size),
                        "tpr": float(np.mean(e.scores > threshold)), "detected": first is not None,
                        "delay_frames": first, "delay_s": None if first is None else float(e.timestamps[first] - e.timestamps[0]),
                        "first_above_frame": above, "uncovered_frames": frame_ranges(e.uncovered)})
    delays = [r["delay_frames"] for r in per_ood if r["delay_frames"] is not None]
    by_dataset = {}
    for name in dict.fromkeys(e.dataset for e in ood_eps):
        s = np.concatenate([e.scores for e in ood_eps if e.dataset == name])
        by_dataset[name] = {"auroc": auroc(id_s, s), "tpr_at_threshold": float(np.mean(s > threshold)), "frames": int(s.size)}
    return {
        "threshold": threshold,
        "frames": {"in_distribution": int(id_s.size), "ood": int(ood_s.size)},
        "auroc": auroc(id_s, ood_s),
        "tpr_at_threshold": float(np.mean(ood_s > threshold)),
        "false_positive_rate_at_threshold": float(np.mean(id_s > threshold)),
        "uncovered_frames": {"in_distribution": int(sum(e.uncovered.sum() for e in id_eps)),
                             "ood": int(sum(e.uncovered.sum() for e in ood_eps))},
        "episodes_with_false_alarm": float(np.mean([r["alarm_raised"] for r in per_id])) if per_id else None,
        "ood_episodes_detected": float(np.mean([r["detected"] for r in per_ood])) if per_ood else None,
        "mean_detection_delay_frames": float(np.mean(delays)) if delays else None,
        "ood_datasets": by_dataset,
        "in_distribution_episodes": per_id,
        "ood_episodes": per_ood,
    }
