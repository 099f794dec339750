"""``ood_params.json``: the threshold, the score's parameters and the calibration score distribution."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ModelError


@dataclass
class OODParams:
    """Args:
    threshold: frames whose score exceeds it count as out of distribution.
    alpha: target false-alarm rate per frame the threshold was calibrated for.
    score: a registered scorer's name (``registry.SCORERS``: sae_recon_mse, sae_recon_z, token_knn, patch_knn).
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
    policy, policy_fingerprint: the policy the parameters were calibrated with (``policy_fingerprint``);
        another policy is refused.
    signal_params: the parameters of scorers whose files are not OOD fields of their own (e.g.
        ``action_consistency``'s action spread and rate).
    signals: further signals the alarm watches beside ``score``, each {"score", "threshold", ...its fields}.
        All thresholds are calibrated jointly (``conformal.joint_thresholds``): a clean frame exceeds any
        of them with probability at most ``alpha``.
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
    policy: str = ""
    policy_fingerprint: str = ""
    signal_params: dict = field(default_factory=dict)
    signals: list = field(default_factory=list)
    source_dir: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not math.isfinite(self.threshold)
        ):
            raise ValueError(f"threshold={self.threshold!r} must be a finite number")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha!r} must be a number within (0, 1)")
        from .registry import scorer_class

        scorer_class(self.score)  # an unknown score is an error naming the known ones
        if self.score == "sae_recon_z" and (not self.token_mean or len(self.token_mean) != len(self.token_std)):
            raise ValueError("score 'sae_recon_z' needs token_mean and token_std of equal, non-zero length")
        if self.score in ("token_knn", "patch_knn") and not self.reference:
            raise ValueError(f"score {self.score!r} needs a reference file")

    def signal(self, index: int) -> OODParams:
        """The parameters of ``signals[index]`` as OOD parameters of their own (to load its scorer)."""
        entry = dict(self.signals[index])
        return OODParams(
            threshold=float(entry.pop("threshold")),
            alpha=self.alpha,
            score=entry.pop("score"),
            **entry,
            policy=self.policy,
            policy_fingerprint=self.policy_fingerprint,
            source_dir=self.source_dir,
        )

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
    def load(cls, path: str | Path) -> OODParams:
        path = Path(path)
        try:
            params = cls(**json.loads(path.read_text()))
            params.source_dir = str(path.parent)
            return params
        except (OSError, TypeError, ValueError) as exc:
            raise ModelError(f"Could not load OOD parameters from {path}: {exc}") from exc
