"""Out-of-distribution signals and their conformal calibration.

Every score is a ``Scorer`` (``scorer.py``) registered by name (``registry.py``):

- ``sae_recon_mse`` (default): mean SAE reconstruction error over the frame's tokens (the seed's idea,
  per token instead of per frame); ``sae_recon_z``: each token position's error standardised by its clean
  mean and spread (``recon.py``).
- ``token_knn``: distance of the frame's standardised encoder-input tokens to its k nearest clean
  reference frames (``token_knn.py``).
- ``patch_knn``: state-conditioned, per-patch nearest-neighbour distance of the policy's early vision
  features (``patch_knn.py``); the most sensitive, and the one the demo calibrates.
- ``action_consistency``: how much the predicted action chunk disagrees with those of the last ticks: a
  signal from the policy, not the pixels (``action_consistency.py``); usually watched beside an
  appearance score (``OODParams.signals``), all thresholds calibrated to one false-alarm rate.

Measured on the SO-101 demo (docs/demo.md): the reconstruction scores reached AUROC 0.41-0.77 per
perturbation, token_knn 0.49-0.998, patch_knn 0.999-1.0 on all six. The reconstruction error stays the
default because it needs no reference set and no joint states. ``ood_params.json`` (``params.py``) holds
the threshold, the score's parameters and the calibration score distribution.
"""

from .action_consistency import ActionConsistency
from .conformal import auroc, calibrate, conformal_threshold, joint_thresholds
from .evaluate import EpisodeScores, evaluate_episodes, frame_ranges, score_episodes
from .params import OODParams
from .recon import ReconMse, ReconZ, fit_token_standardizer, frame_scores
from .registry import SCORERS, descriptions, load_scorer, register, scorer_class
from .scorer import FitJob, Fitted, ScoreBatch, ScoreOutput, Scorer
from .token_knn import KnnScorer

__all__ = [
    "SCORERS",
    "ActionConsistency",
    "EpisodeScores",
    "FitJob",
    "Fitted",
    "KnnScorer",
    "OODParams",
    "ReconMse",
    "ReconZ",
    "ScoreBatch",
    "ScoreOutput",
    "Scorer",
    "auroc",
    "calibrate",
    "conformal_threshold",
    "descriptions",
    "evaluate_episodes",
    "fit_token_standardizer",
    "frame_ranges",
    "frame_scores",
    "joint_thresholds",
    "load_scorer",
    "register",
    "score_episodes",
    "scorer_class",
]
