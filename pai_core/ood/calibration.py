"""``pai calibrate-ood`` as a library call (``CalibrationJob`` -> ``calibrate_ood``), and what it decides before
and after scoring: which episodes calibrate (the SAE's held-out ones), which frames form a kNN score's
reference, and which calibration frames its reference does not cover. The scoring itself is
``evaluate.score_episodes``; the threshold, ``conformal.calibrate``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import OOD_SCORES, OOD_SIGNALS, OodScore, OodSignal
from ..errors import UsageError
from .evaluate import EpisodeScores, frame_ranges

log = logging.getLogger(__name__)


def default_episodes(sae_extra: dict[str, Any], dataset: Any) -> list[int] | None:
    """The SAE's held-out episodes when ``dataset`` is the one it was trained on (calibrating on training
    frames would set the threshold too low)."""
    same_root = (
        sae_extra.get("dataset_root") and Path(sae_extra["dataset_root"]).resolve() == Path(dataset.root).resolve()
    )
    if same_root and sae_extra.get("held_out_episodes"):
        return list(sae_extra["held_out_episodes"])
    return None


def reference_set(
    sae_extra: dict[str, Any],
    dataset: Any,
    calibration_episodes: Sequence[int],
    score: str,
    reference_root: str | None = None,
    reference_episodes: Sequence[int] | None = None,
    stride: int = 1,
    repo_id: str = "",
) -> tuple[Any, list[int]]:
    """(reference dataset, its episodes) of a kNN score. Default: the SAE's training dataset and episodes
    (``sae_extra``: its config's ``extra``), plus for ``patch_knn`` the calibration episodes (which its ``fit``
    then scores with their own frames left out). ``repo_id`` names the reference dataset when the SAE does not."""
    from ..sources.dataset import open_dataset, select_episodes

    root = reference_root or sae_extra.get("dataset_root")
    if not root:
        raise UsageError(f"--score {score} needs --reference-root (the SAE does not record its training dataset)")
    if stride < 1:
        raise UsageError(f"--reference-stride {stride} must be at least 1")
    ref = (
        dataset
        if Path(root).resolve() == Path(dataset.root).resolve()
        else open_dataset(sae_extra.get("dataset") or repo_id, root)
    )
    episodes = list(reference_episodes or [])
    if not episodes and not reference_root:  # the SAE's training episodes, never its held-out ones
        held = set(sae_extra.get("held_out_episodes") or [])
        episodes = sae_extra.get("train_episodes") or [e for e in range(ref.meta.total_episodes) if e not in held]
    episodes = select_episodes(ref, episodes)
    if ref is dataset and score == "patch_knn" and not reference_episodes:
        episodes = sorted(set(episodes) | set(calibration_episodes))
    return ref, episodes


def coverage_summary(eps: Sequence[EpisodeScores]) -> dict:
    """Calibration frames outside the reference's joint-state coverage: counted, named, and warned about
    when they are more than a few (their scores say the reference is missing states, not that the frames
    are novel, so they stay out of the threshold)."""
    uncovered = {str(e.episode): frame_ranges(e.uncovered) for e in eps if e.uncovered.any()}
    n = int(sum(e.uncovered.sum() for e in eps))
    total = int(sum(e.scores.size for e in eps))
    if n:
        log.warning(
            "%d of %d calibration frames have joint states the patch_knn reference does not cover (kept out "
            "of the threshold): episode: frames %s. Add reference episodes that visit these states "
            "(--reference-episodes) for the alarm to judge them.",
            n,
            total,
            uncovered,
        )
    return {"excluded_frames": n, "frames": total, "episodes": uncovered}


@dataclass
class CalibrationJob:
    """What ``calibrate_ood`` scores and where it writes (the CLI's flags, by the same names).

    Args:
    sae_path: SAE folder (a hub SAE is located by the caller: pass its snapshot folder).
    policy_path: the policy the SAE was trained on.
    dataset_repo_id, root: the held-out clean dataset.
    ood_params_path: the ``ood_params.json`` to write; its folder also gets the plot and reference files.
    copy_sae: first copy the SAE's files into that folder (a calibrated copy of a read-only SAE).
    episodes: calibration episodes (None: the SAE's held-out ones when ``root`` is its dataset, else all).
    alpha: target false-alarm rate per frame.
    score: the appearance score; signals: further signals calibrated jointly with it.
    reference_root, reference_episodes, knn_k, reference_stride, reference_max_gb, reference_nuisance: the
        kNN scores' reference (``pai calibrate-ood --help``).
    batch_size, device, model_options: how the pipeline runs (``IntrospectionConfig`` keywords).
    """

    sae_path: str | Path
    policy_path: str | Path
    dataset_repo_id: str
    root: str | Path | None
    ood_params_path: Path
    copy_sae: bool = False
    episodes: list[int] | None = None
    alpha: float = 0.01
    score: OodScore = "sae_recon_mse"
    signals: Sequence[OodSignal] = ()
    reference_root: str | None = None
    reference_episodes: list[int] | None = None
    knn_k: int | None = None
    reference_stride: int = 1
    reference_max_gb: float | None = 4.0
    reference_nuisance: int = 0
    batch_size: int = 16
    device: str = "cpu"
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ood_params_path = Path(self.ood_params_path)
        if self.score not in OOD_SCORES:
            raise UsageError(f"--score {self.score!r}: expected one of {', '.join(OOD_SCORES)}")
        unknown = [s for s in self.signals if s not in OOD_SIGNALS]
        if unknown:
            raise UsageError(f"--signals {unknown}: expected any of {', '.join(OOD_SIGNALS)}")
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"--alpha {self.alpha} must be within (0, 1)")
        if self.reference_max_gb is not None and not self.reference_max_gb > 0:
            raise UsageError(f"--reference-max-gb {self.reference_max_gb} must be > 0")
        if self.reference_nuisance < 0:
            raise UsageError(f"--reference-nuisance {self.reference_nuisance} must be >= 0")


def calibrate_ood(job: CalibrationJob) -> dict[str, Any]:
    """Fit the score (and signals), score the calibration episodes, set the joint conformal thresholds and
    write ``ood_params.json`` with its plot and reference files; returns the summary ``pai calibrate-ood``
    prints."""
    import numpy as np

    from ..engine import IntrospectionConfig
    from ..errors import ModelError
    from ..hub import copy_sae
    from ..nuisance import NuisanceRange
    from ..pipeline import Pipeline
    from ..preflight import check_alpha, check_dataset_for_policy
    from ..sources.dataset import open_dataset, select_episodes
    from .conformal import calibrate, joint_thresholds
    from .evaluate import score_episodes
    from .params import OODParams
    from .plots import plot_calibration
    from .recon import fit_episode_count
    from .registry import scorer_class
    from .scorer import FitJob

    out, sae_dir = job.ood_params_path, Path(job.sae_path)
    dataset = open_dataset(job.dataset_repo_id, job.root)
    engine_config = IntrospectionConfig(device=job.device, **job.model_options)
    pipe = Pipeline.load(
        str(job.policy_path), str(sae_dir), device=job.device, engine_config=engine_config, load_ood=False
    )
    if pipe.extractor is None:
        raise ModelError(f"--sae-path {job.sae_path} loaded no SAE")
    sae_extra = pipe.extractor.sae.config.extra
    episodes = job.episodes
    if not episodes:
        episodes = default_episodes(sae_extra, dataset)
        if episodes:
            log.info("calibrating on the SAE's held-out episodes %s", episodes)
    episodes = select_episodes(dataset, episodes)
    frames = check_dataset_for_policy(dataset, pipe.engine, episodes, str(job.policy_path))
    check_alpha(
        sum(fit_episode_count(job.score, list(frames.values()))),
        job.alpha,
        f"calibration episodes {episodes} of {job.dataset_repo_id}",
    )
    reference = None
    if job.score in ("token_knn", "patch_knn"):
        ref, ref_episodes = reference_set(
            sae_extra,
            dataset,
            episodes,
            job.score,
            job.reference_root,
            job.reference_episodes,
            job.reference_stride,
            job.dataset_repo_id,
        )
        check_dataset_for_policy(ref, pipe.engine, ref_episodes, str(job.policy_path))
        reference = (ref, ref_episodes)
    options = {
        "knn_k": job.knn_k,
        "stride": job.reference_stride,
        "batch_size": job.batch_size,
        "nuisance_variants": job.reference_nuisance,
        "max_bytes": None if job.reference_max_gb is None else job.reference_max_gb * 1e9,
    }
    if job.copy_sae and out.parent.resolve() != sae_dir.resolve():
        copy_sae(sae_dir, out.parent, with_ood=False)  # the SAE's files beside the OOD files written below
    fit_job = FitJob(pipe, dataset, episodes, reference, options)
    fitted = scorer_class(job.score).fit(fit_job)
    fields: dict[str, Any] = fitted.scorer.save(out.parent)
    del fitted.scorer  # scoring below loads what was saved (a reference is mapped, not held twice)
    signals = [
        {"score": name, "threshold": 0.0, **scorer_class(name).fit(fit_job).scorer.save(out.parent)}
        for name in dict.fromkeys(job.signals)
    ]
    pipe.ood = OODParams(
        threshold=0.0,
        score=job.score,
        **fields,
        source_dir=str(out.parent),
        signals=signals,
        policy_fingerprint=pipe.engine.fingerprint,
    )
    eps = score_episodes(
        pipe,
        dataset,
        fitted.threshold_episodes,
        job.batch_size,
        leave_out_own_episode=fitted.leave_out_own_episode,
        nuisance=NuisanceRange() if job.reference_nuisance else None,
    )
    covered = np.concatenate([~e.uncovered for e in eps])
    per_signal = {job.score: np.concatenate([e.scores for e in eps])[covered]} | {
        s["score"]: np.concatenate([e.signals[s["score"]] for e in eps])[covered] for s in signals
    }
    scores = per_signal[job.score]
    if any(e.coverage is not None for e in eps):
        fields["coverage"] = coverage_summary(eps)
    try:
        check_alpha(scores.size, job.alpha, "the covered calibration frames")
        params = calibrate(scores, job.alpha)
        if signals:
            thresholds, tau = joint_thresholds(per_signal, job.alpha)
            params.threshold = thresholds[job.score]
            for s in signals:
                s["threshold"] = thresholds[s["score"]]
            fields |= {"signals": signals}
            log.info(
                "joint calibration of %s: thresholds %s (tau %.3f)",
                list(thresholds),
                {k: round(v, 4) for k, v in thresholds.items()},
                tau,
            )
    except ValueError as exc:
        raise UsageError(f"Calibration on {scores.size} frames failed: {exc}") from exc
    for key, value in fields.items():
        setattr(params, key, value)
    params.score = job.score
    params.dataset = str(job.root or job.dataset_repo_id)
    params.episodes = [e.episode for e in eps]
    params.policy, params.policy_fingerprint = str(job.policy_path), pipe.engine.fingerprint
    params.save(out)
    png = plot_calibration(
        scores,
        params.threshold,
        job.alpha,
        out.with_name("ood_calibration.png"),
        f"{job.dataset_repo_id}: {len(eps)} episodes, {job.score}",
    )
    alarmed = scores > params.threshold
    for s in signals:
        alarmed |= per_signal[s["score"]] > s["threshold"]
    result: dict[str, Any] = {
        "ood_params": str(out),
        "plot": str(png),
        "score": job.score,
        "threshold": round(params.threshold, 6),
        "alpha": params.alpha,
        "frames": params.n_calibration,
        "empirical_rate_on_calibration": round(float(np.mean(alarmed)), 6),
    }
    if params.coverage:
        result["uncovered_frames_excluded"] = params.coverage["excluded_frames"]
    if signals:
        result["signals"] = {s["score"]: round(s["threshold"], 6) for s in signals}
    return result
