"""``action_consistency``: a signal that looks at the policy, not at the pixels.

Every tick the engine predicts a whole chunk of T future actions. Where the policy is on familiar ground
the chunk it predicts now agrees with the overlapping part of the chunks it predicted a few ticks ago
(it learned one consistent behaviour per situation); where it is about to fail it keeps changing its
mind. The score of a frame is the mean, over the chunks predicted l = 1 .. ``lags`` actions earlier (those
of repeated frames left out, below), of the mean squared difference between ``chunk_now[:h]`` and
``chunk_then[l:l + h]`` (h at most ``horizon``), each action dimension divided by its spread in the
dataset. The shift l is the number of actions executed between the two frames, which pai cannot see
when frames are lost: where pai drives the robot (one command per frame) the plan advanced by the frames
in between, where another process drives it on its own clock by the stamps times the policy's rate, and
on a real arm that catches up with its last target while it waits, by something in between. So each
earlier chunk is compared at every shift from the frame count to the stamp count and the best match is
kept; on consecutive frames (every calibration) the two agree. It needs no SAE and no
reference frames, so camera nuisance that the policy tolerates does not move it.

A frame whose images are the previous frame's again (a camera driver that republishes its last buffer
with a fresh stamp, next to fresh joint states) is no new view of the world: its chunk is predicted from
a picture of the past, so comparing it would measure the stale picture, not the policy. Such a frame keeps
the previous score and its chunk is not compared later; ``repeated_frames`` counts them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import ClassVar

import numpy as np

from .params import OODParams
from .registry import register
from .scorer import FitJob, Fitted, Scale, ScoreBatch, ScoreOutput


@register
class ActionConsistency:
    """(module docstring)

    Args:
        action_std: (A,) spread of each action dimension (the dataset's action statistics).
        fps: policy action rate (steps per second): turns the stamps between two ticks into chunk steps.
        lags: how many actions back earlier chunks are compared with the current one.
        horizon: leading steps of the overlap compared (the near future matters most).
    """

    name: ClassVar[str] = "action_consistency"
    description: ClassVar[str] = "disagreement of the predicted action chunk with the chunks of the last ticks"
    needs_vision_features: ClassVar[bool] = False

    def __init__(self, action_std: Sequence[float] | np.ndarray, fps: float, lags: int = 3, horizon: int = 10):
        self.action_std = np.maximum(np.asarray(action_std, np.float64).reshape(-1), 1e-6)
        if not fps > 0 or lags < 1 or horizon < 1:
            raise ValueError(f"fps={fps} must be > 0, lags={lags} and horizon={horizon} >= 1")
        self.fps, self.lags, self.horizon = float(fps), int(lags), int(horizon)
        self.reset()

    def reset(self) -> None:
        """New episode: no earlier chunk to compare with."""
        self._history: deque[tuple[int, float, np.ndarray]] = deque(maxlen=self.lags)
        self._last_images: dict[str, np.ndarray] | None = None
        self._last_score = 0.0
        self._frames = 0  # frames scored since the reset, repeated ones included (each drove one action)
        self.repeated_frames = 0

    # ------------------------------------------------------------------ fitting and files
    @classmethod
    def fit(cls, job: FitJob) -> Fitted:
        """Nothing to learn but the scale: the dataset's action spread and frame rate."""
        stats = (job.dataset.meta.stats or {}).get("action", {})
        std = np.asarray(stats.get("std", np.ones(job.pipe.engine.action_dim)), np.float64)
        o = job.options
        return Fitted(cls(std, float(job.dataset.fps), o.get("lags", 3), o.get("horizon", 10)), list(job.episodes))

    def save(self, folder: Path) -> dict:
        return {
            "signal_params": {
                "action_std": self.action_std.tolist(),
                "fps": self.fps,
                "lags": self.lags,
                "horizon": self.horizon,
            }
        }

    @classmethod
    def load(cls, params: OODParams) -> ActionConsistency:
        p = params.signal_params
        return cls(p["action_std"], p["fps"], p.get("lags", 3), p.get("horizon", 10))

    # ------------------------------------------------------------------ scoring
    def score(self, batch: ScoreBatch) -> ScoreOutput:
        """Frames in time order (the history carries over from the previous batch until ``reset``)."""
        scores = np.empty(len(batch.results), np.float64)
        for i, (res, obs) in enumerate(zip(batch.results, batch.observations)):
            at = (self._frames, float(obs.timestamp) * self.fps)  # the two clocks, in action steps
            self._frames += 1
            repeated = self._same_images(obs.images)
            self._last_images = obs.images
            if repeated:
                self.repeated_frames += 1
                scores[i] = self._last_score
                continue
            chunk = np.asarray(res.action_chunk, np.float64) / self.action_std  # (T, A) in spreads
            scores[i] = self._last_score = self._disagreement(at, chunk)
            self._history.append((*at, chunk))
        return ScoreOutput(scores, [{} for _ in scores])

    def _same_images(self, images: dict[str, np.ndarray]) -> bool:
        """Every camera's image equals the previous frame's (the same buffer again, not a new view)."""
        last = self._last_images
        return (
            last is not None
            and last.keys() == images.keys()
            and all(np.array_equal(np.asarray(images[k]), np.asarray(last[k])) for k in images)
        )

    def _disagreement(self, at: tuple[int, float], chunk: np.ndarray) -> float:
        """``at``: the frame's (frame count, stamp in action steps); each earlier chunk counts with its best
        shift between the two clocks (module docstring)."""
        diffs = []
        for earlier_frame, earlier_stamp, earlier in self._history:
            by_frames, by_stamps = at[0] - earlier_frame, int(round(at[1] - earlier_stamp))
            low, high = max(1, min(by_frames, by_stamps)), max(by_frames, by_stamps)
            if low > self.lags or high >= earlier.shape[0]:
                continue  # more than ``lags`` actions back, or some candidate shift leaves no overlap
            h = min(self.horizon, chunk.shape[0], earlier.shape[0] - high)
            diffs.append(min(float(np.mean((chunk[:h] - earlier[s : s + h]) ** 2)) for s in range(low, high + 1)))
        return float(np.mean(diffs)) if diffs else 0.0

    def leaving_out(self, episode: int | None) -> AbstractContextManager[ActionConsistency]:
        return nullcontext(self)

    def describe(self) -> dict:
        return {"lags": self.lags, "horizon": self.horizon, "fps": self.fps, "repeated_frames": self.repeated_frames}

    def map_scale(self, threshold: float) -> Scale | None:
        return None  # no image maps


__all__ = ["ActionConsistency"]
