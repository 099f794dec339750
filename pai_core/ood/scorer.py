"""The one interface every OOD signal implements, so the pipeline, the node, replay, ``calibrate-ood`` and
``evaluate-ood`` call a scorer instead of dispatching on the score's name.

A scorer is fitted once (``fit``: from the calibration job: a reference set, a standardiser, or nothing),
saved beside ``ood_params.json`` (``save`` returns the fields that find its files again), loaded by the
registry from those parameters (``load``), and then turns each batch's engine output into per-frame
scores and maps (``score``). The threshold is not the scorer's business: it is conformal, set on its
scores by ``calibrate-ood``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..engine import FrameResult
    from ..observation import Observation
    from .params import OODParams

Scale = tuple[float, float]


@dataclass
class ScoreBatch:
    """What a scorer may look at for B frames of one engine forward.

    Args:
        results: engine output per frame (tokens, input tokens, vision features, layout, action chunk).
        observations: the inputs (images, joint state, stamps).
        token_error: (B, S) per-token SAE reconstruction error (every scorer gets it: the pipeline runs
            the SAE anyway, for the features).
    """

    results: Sequence[FrameResult]
    observations: Sequence[Observation]
    token_error: np.ndarray


@dataclass
class ScoreOutput:
    """scores: (B,) frame scores; maps: per frame, camera -> (h, w) map of where the score comes from;
    coverage: (B,) joint-state coverage (> 1: not covered) for scorers that condition on the state."""

    scores: np.ndarray
    maps: list[dict[str, np.ndarray]]
    coverage: np.ndarray | None = None


@dataclass
class FitJob:
    """Everything ``calibrate-ood`` knows when a scorer is fitted.

    Args:
        pipe: the pipeline (policy and SAE loaded, no OOD parameters yet).
        dataset: the calibration dataset; episodes: its calibration episodes.
        reference: (dataset, episodes) of clean reference frames for the kNN scores, or None.
        options: score-specific settings (``knn_k``, ``stride``, ``max_bytes``, ``batch_size``).
    """

    pipe: Any
    dataset: Any
    episodes: list[int]
    reference: tuple[Any, list[int]] | None = None
    options: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.options.get("batch_size", 16))


@dataclass
class Fitted:
    """A fitted scorer and how to calibrate it: the episodes whose scores set the threshold (those a
    standardiser did not see), and whether each must be scored with its own reference frames left out."""

    scorer: Scorer
    threshold_episodes: list[int]
    leave_out_own_episode: bool = False


@runtime_checkable
class Scorer(Protocol):
    """One OOD signal (module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_vision_features: ClassVar[bool]  # the engine keeps the backbone's feature maps for it

    @classmethod
    def fit(cls, job: FitJob) -> Fitted: ...

    @classmethod
    def load(cls, params: OODParams) -> Scorer: ...

    def save(self, folder: Path) -> dict:
        """Write the scorer's files into ``folder``; returns the ``OODParams`` fields that load it again."""
        ...

    def score(self, batch: ScoreBatch) -> ScoreOutput: ...

    def reset(self) -> None:
        """New episode (a scorer that compares a frame with earlier ones forgets them)."""
        ...

    def leaving_out(self, episode: int | None) -> AbstractContextManager[Any]:
        """Score with reference episode ``episode`` left out (a no-op for scorers without a reference)."""
        ...

    def describe(self) -> dict:
        """Size and placement of what the scorer holds (diagnostics and reports)."""
        ...

    def map_scale(self, threshold: float) -> Scale | dict[str, Scale] | None:
        """A fixed (untinted, full heat) colour scale for the maps at ``threshold``; None: per-frame."""
        ...
