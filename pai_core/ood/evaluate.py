"""Scoring dataset episodes through the pipeline and the detection metrics of ``pai evaluate-ood``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import ModelError, UsageError
from .conformal import auroc

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from ..nuisance import NuisanceRange
    from ..pipeline import Pipeline


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
        signals: further signals' (T,) scores by name (``OODParams.signals``).
    """

    dataset: str
    episode: int
    scores: np.ndarray
    timestamps: np.ndarray
    alarm: np.ndarray
    token_error: np.ndarray | None = None
    coverage: np.ndarray | None = None
    signals: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def uncovered(self) -> np.ndarray:
        """(T,) frames whose joint state the ``patch_knn`` reference does not cover (all False otherwise)."""
        return np.zeros(self.scores.shape, bool) if self.coverage is None else self.coverage > 1.0


def score_episodes(
    pipe: Pipeline,
    dataset: LeRobotDataset,
    episodes: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    leave_out_own_episode: bool = False,
    nuisance: NuisanceRange | None = None,
    seed: int = 0,
) -> list[EpisodeScores]:
    """Run ``Pipeline.step_batch`` over episodes (the alarm restarts with each episode) and collect the
    frame scores; the pipeline is the only place a score is computed. With ``leave_out_own_episode``
    (calibrating on episodes that are also in the scorer's reference) each episode is scored without
    its own reference frames. With ``nuisance`` (a ``NuisanceRange``) half the frames, drawn at random
    (seeded), are seen under a camera condition from that range: a threshold set on them tolerates it."""
    from ..replay.runner import RunConfig, Segment, run_segments
    from ..sources.dataset import episode_bounds, iter_episode, select_episodes

    if pipe.extractor is None:
        raise ModelError("Scoring frames needs a pipeline with an SAE (pass --sae-path)")
    episodes = select_episodes(dataset, episodes)
    total = sum(b - a for a, b in (episode_bounds(dataset, ep) for ep in episodes))
    scorer = getattr(pipe, "scorer", None)

    def segment(ep: int) -> Segment:
        frames = iter_episode(dataset, ep)  # image and video datasets alike
        if nuisance is not None:
            rng = np.random.default_rng([seed, ep])
            frames = (
                nuisance.sample(rng).observe(o, int(rng.integers(2**31))) if rng.random() < 0.5 else o for o in frames
            )
        leave = (lambda: scorer.leaving_out(ep)) if leave_out_own_episode and scorer is not None else None
        return Segment(ep, frames, context=leave)

    sink = _ScoreSink(str(dataset.repo_id))
    config = RunConfig(batch_size, progress=progress, desc=f"score {dataset.repo_id}", rejected="raise")
    run_segments((segment(ep) for ep in episodes), pipe, [sink], config=config, total=total)
    return sink.episodes


class _ScoreSink:
    """Collects each episode's frame scores into an ``EpisodeScores``."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.episodes: list[EpisodeScores] = []
        self.frames: list[Any] = []

    def begin(self, episode: int) -> None:
        self.frames = []

    def write(self, frames: Sequence[Any]) -> None:
        self.frames.extend(frames)

    def end(self, episode: int) -> None:
        frames, self.frames = self.frames, []
        coverage = [f.state_coverage for f in frames]
        signals = [f.signals for f in frames]
        self.episodes.append(
            EpisodeScores(
                self.dataset,
                episode,
                np.asarray([f.ood_score for f in frames], np.float64),
                np.asarray([f.observation.timestamp for f in frames], np.float64),
                np.asarray([f.alarm.active for f in frames], bool),
                np.stack(cast("list[np.ndarray]", [f.token_error for f in frames])),  # set by the SAE (checked)
                None if any(c is None for c in coverage) else np.asarray(coverage, np.float64),
                {k: np.asarray([s[k] for s in signals], np.float64) for k in (signals[0] if signals else {})},
            )
        )

    def close(self) -> None:
        pass


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
    per_id: list[dict[str, Any]] = []
    per_ood: list[dict[str, Any]] = []
    for e in id_eps:
        first = _first(e.alarm)
        per_id.append(
            {
                "dataset": e.dataset,
                "episode": e.episode,
                "frames": int(e.scores.size),
                "false_alarm_rate": float(np.mean(e.scores > threshold)),
                "alarm_raised": first is not None,
                "first_alarm_frame": first,
                "uncovered_frames": frame_ranges(e.uncovered),
            }
        )
    for e in ood_eps:
        first, above = _first(e.alarm), _first(e.scores > threshold)
        per_ood.append(
            {
                "dataset": e.dataset,
                "episode": e.episode,
                "frames": int(e.scores.size),
                "tpr": float(np.mean(e.scores > threshold)),
                "detected": first is not None,
                "delay_frames": first,
                "delay_s": None if first is None else float(e.timestamps[first] - e.timestamps[0]),
                "first_above_frame": above,
                "uncovered_frames": frame_ranges(e.uncovered),
            }
        )
    delays = [r["delay_frames"] for r in per_ood if r["delay_frames"] is not None]
    by_dataset = {}
    for name in dict.fromkeys(e.dataset for e in ood_eps):
        s = np.concatenate([e.scores for e in ood_eps if e.dataset == name])
        by_dataset[name] = {
            "auroc": auroc(id_s, s),
            "tpr_at_threshold": float(np.mean(s > threshold)),
            "frames": int(s.size),
        }
    per_signal = {}
    for name in id_eps[0].signals if id_eps else {}:
        per_signal[name] = (
            {
                "auroc": auroc(
                    np.concatenate([e.signals[name] for e in id_eps]),
                    np.concatenate([e.signals[name] for e in ood_eps]),
                )
            }
            if ood_eps
            else {}
        )
    return {
        "threshold": threshold,
        "signals": per_signal,
        "frames": {"in_distribution": int(id_s.size), "ood": int(ood_s.size)},
        "auroc": auroc(id_s, ood_s),
        "tpr_at_threshold": float(np.mean(ood_s > threshold)),
        "false_positive_rate_at_threshold": float(np.mean(id_s > threshold)),
        "uncovered_frames": {
            "in_distribution": int(sum(e.uncovered.sum() for e in id_eps)),
            "ood": int(sum(e.uncovered.sum() for e in ood_eps)),
        },
        "episodes_with_false_alarm": float(np.mean([r["alarm_raised"] for r in per_id])) if per_id else None,
        "ood_episodes_detected": float(np.mean([r["detected"] for r in per_ood])) if per_ood else None,
        "mean_detection_delay_frames": float(np.mean(delays)) if delays else None,
        "ood_datasets": by_dataset,
        "in_distribution_episodes": per_id,
        "ood_episodes": per_ood,
    }


@dataclass
class EvaluationJob:
    """What ``evaluate_ood`` scores and where it writes (the CLI's flags, by the same names).

    Args:
    sae_path: SAE folder; ood_params_path: its calibrated ``ood_params.json``.
    policy_path: the policy the SAE was trained on.
    id, ood: in-distribution and OOD datasets (local folders, or repo ids found under ``datasets_dir``).
    id_episodes: episodes of the ``id`` datasets (None: all).
    alarm_n, alarm_m: the alarm rule (n frames above threshold among the last m).
    output_dir: where ``ood_evaluation.json`` and ``ood_evaluation.png`` go.
    batch_size, device, model_options: how the pipeline runs (``IntrospectionConfig`` keywords).
    """

    sae_path: str | Path
    policy_path: str | Path
    id: Sequence[str | Path]
    ood: Sequence[str | Path]
    output_dir: str | Path
    ood_params_path: str | Path | None = None
    datasets_dir: str | None = None
    id_episodes: list[int] | None = None
    alarm_n: int = 3
    alarm_m: int = 5
    batch_size: int = 16
    device: str = "cpu"
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ood_params_path = Path(self.ood_params_path or Path(self.sae_path) / "ood_params.json")
        if not self.id or not self.ood:
            raise UsageError(f"evaluate-ood needs in-distribution and OOD datasets (--id {self.id}, --ood {self.ood})")


def evaluate_ood(job: EvaluationJob) -> dict[str, Any]:
    """Score the ``id`` and ``ood`` episodes with the calibrated threshold and alarm, write the JSON and the
    plot; returns the summary ``pai evaluate-ood`` prints."""
    import json

    from ..alarm import AlarmConfig
    from ..engine import IntrospectionConfig
    from ..errors import ConfigError
    from ..outputs import prepare_output_dir
    from ..pipeline import Pipeline
    from ..preflight import check_dataset_for_policy
    from ..sources.dataset import open_dataset_spec, select_episodes
    from .plots import plot_evaluation

    try:
        alarm = AlarmConfig(n=job.alarm_n, m=job.alarm_m, latch=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    params = Path(cast(Path, job.ood_params_path))
    if not params.is_file():
        raise ModelError(f"No OOD parameters at {params}: run `pai calibrate-ood --sae-path {job.sae_path} ...` first")
    engine_config = IntrospectionConfig(device=job.device, **job.model_options)
    pipe = Pipeline.load(
        str(job.policy_path),
        str(job.sae_path),
        str(params),
        device=job.device,
        alarm=alarm,
        engine_config=engine_config,
    )
    if pipe.ood is None or pipe.threshold is None:
        raise ModelError(f"{params} loaded no OOD parameters")
    id_sets = [(open_dataset_spec(str(spec), job.datasets_dir), job.id_episodes) for spec in job.id]
    ood_sets = [(open_dataset_spec(str(spec), job.datasets_dir), None) for spec in job.ood]
    for ds, episodes in id_sets + ood_sets:  # every dataset checked before the first forward pass
        check_dataset_for_policy(ds, pipe.engine, select_episodes(ds, episodes), str(job.policy_path))
    id_eps = [e for ds, episodes in id_sets for e in score_episodes(pipe, ds, episodes, job.batch_size)]
    ood_eps = [e for ds, _ in ood_sets for e in score_episodes(pipe, ds, None, job.batch_size)]
    result = evaluate_episodes(id_eps, ood_eps, pipe.threshold)
    result |= {
        "alpha": pipe.ood.alpha,
        "alarm": {"n": alarm.n, "m": alarm.m, "latch": alarm.latch},
        "id": [str(s) for s in job.id],
        "ood": [str(s) for s in job.ood],
    }
    out = prepare_output_dir(job.output_dir, "evaluation folder (--output-dir)")
    (out / "ood_evaluation.json").write_text(json.dumps(result, indent=2))
    png = plot_evaluation(id_eps, ood_eps, result, out / "ood_evaluation.png")
    keys = (
        "auroc",
        "tpr_at_threshold",
        "false_positive_rate_at_threshold",
        "episodes_with_false_alarm",
        "ood_episodes_detected",
        "mean_detection_delay_frames",
    )
    return {k: result[k] for k in keys} | {"json": str(out / "ood_evaluation.json"), "plot": str(png)}
