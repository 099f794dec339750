"""``pai calibrate-ood``: conformal OOD threshold from held-out in-distribution episodes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from . import args as flags

if TYPE_CHECKING:
    from ..hub import SaeLocation

log = logging.getLogger(__name__)
SCORE_NAMES = ["sae_recon_mse", "sae_recon_z", "token_knn", "patch_knn"]  # the registry's, without importing torch


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate-ood",
        help="set the OOD threshold for a target false-alarm rate",
        description="Score held-out in-distribution episodes through the pipeline and set the "
        "threshold as the split-conformal quantile for false-alarm rate ALPHA per frame. "
        "Writes ood_params.json, ood_calibration.png and the score's reference file into "
        "the SAE directory (or a copy of it, --output-dir); --upload-to-hub then publishes "
        "the calibrated SAE as one unit.",
    )
    flags.add_sae_path(p, help="SAE folder from `pai train-sae`, or a hub id")
    flags.add_policy_path(p)
    flags.add_dataset(p)
    flags.add_episodes(
        p,
        help="held-out episodes, e.g. 0,2,5-7 (default: the SAE's held-out episodes when this is its training "
        "dataset, else all)",
    )
    p.add_argument("--alpha", type=float, default=0.01, help="target false-alarm rate per frame")
    p.add_argument(
        "--score",
        choices=SCORE_NAMES,
        default="sae_recon_mse",
        help="sae_recon_mse: mean token reconstruction error; sae_recon_z: per-position "
        "standardised token error (fitted on a quarter of the episodes, the threshold on the rest); "
        "token_knn: distance of the encoder-input tokens to the nearest clean reference frames; "
        "patch_knn: distance of the backbone's image patches to those of the clean reference "
        "frames nearest in joint state (the most sensitive; docs/trainer.md)",
    )
    p.add_argument(
        "--signals",
        nargs="*",
        default=[],
        choices=["action_consistency"],
        metavar="SIGNAL",
        help="further signals the alarm watches beside --score: action_consistency (how much the "
        "predicted action chunk disagrees with those of the last ticks). All thresholds are "
        "calibrated together, so a clean frame raises any of them with probability about ALPHA",
    )
    p.add_argument(
        "--reference-root",
        default=None,
        help="token_knn/patch_knn: clean reference dataset (default: the SAE's training dataset)",
    )
    flags.add_indices(
        p,
        "--reference-episodes",
        "token_knn: reference episodes, e.g. 0-9 (default: the SAE's training episodes); patch_knn: default "
        "the SAE's training episodes and the calibration episodes, each calibration episode "
        "scored against the others (so replaying it later finds itself in the reference)",
    )
    p.add_argument(
        "--knn-k",
        type=int,
        default=None,
        help="token_knn: neighbours averaged (default 5); patch_knn: reference frames compared (default 32)",
    )
    p.add_argument(
        "--reference-stride",
        type=int,
        default=1,
        help="token_knn/patch_knn: keep every N-th reference frame (smaller file, faster scoring)",
    )
    p.add_argument(
        "--reference-max-gb",
        type=float,
        default=4.0,
        help="patch_knn: largest reference (GB; fitting needs about as much RAM, the node maps it "
        "from disk). Beyond it the frames kept are chosen to cover the joint states (default 4)",
    )
    p.add_argument(
        "--reference-nuisance",
        type=int,
        default=0,
        metavar="N",
        help="patch_knn: each reference frame also enters as N copies under camera nuisance (JPEG 50-95, "
        "exposure +-15 %%, noise, slight blur), so a compressed or brighter camera does not look novel",
    )
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward")
    flags.add_device(p)
    flags.add_model_args(p)
    flags.add_ood_params_path(
        p, "ood_params.json to write (default: SAE_PATH/ood_params.json)", old=["--output"], default=None
    )
    flags.add_output_dir(
        p,
        "write the calibrated SAE here: a copy of the SAE's files with the new OOD files (needed for "
        "a hub SAE, whose snapshot in the hub cache is read-only)",
        required=False,
        default=None,
    )
    h = p.add_argument_group("hub")
    h.add_argument(
        "--upload-to-hub",
        action="store_true",
        help="publish the calibrated SAE folder (weights, card, OOD parameters, reference, labels)",
    )
    flags.add_hub_repo(h, help="hub model repo (default: the --sae-path hub id)")
    return p


def output_location(args: argparse.Namespace, sae: SaeLocation) -> tuple[Path, str | None]:
    """(ood_params.json to write, hub repo to publish to), checked before any scoring: a hub SAE's snapshot is
    never written into, and an upload needs the folder holding ood_params.json to be the SAE's."""
    from ..errors import UsageError
    from ..hub import WEIGHTS
    from ..outputs import prepare_output_dir

    if args.ood_params_path and args.output_dir:
        raise UsageError(
            "give --ood-params-path (an ood_params.json to write) or --output-dir (a calibrated SAE folder), not both"
        )
    repo_id = args.hub_repo_id or sae.repo_id
    if args.upload_to_hub and not repo_id:
        raise UsageError("--upload-to-hub needs --hub-repo-id (the hub model repo to create or update)")
    if args.output_dir:
        folder = prepare_output_dir(args.output_dir, "calibrated SAE folder (--output-dir)")
        return folder / "ood_params.json", repo_id
    if sae.repo_id and not args.ood_params_path:
        raise UsageError(
            f"--sae-path {args.sae_path} is a hub repo (its snapshot in the hub cache is read-only): pass "
            "--output-dir DIR for the calibrated SAE folder"
        )
    out = Path(args.ood_params_path) if args.ood_params_path else sae.path / "ood_params.json"
    if args.upload_to_hub and not (out.parent / WEIGHTS).is_file():
        raise UsageError(
            f"--upload-to-hub publishes the SAE folder holding ood_params.json, but {out.parent} holds "
            "no SAE; use --output-dir DIR instead of --ood-params-path"
        )
    return out, repo_id


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine import IntrospectionConfig
    from ..errors import ModelError, UsageError
    from ..ood import FitJob, OODParams, calibrate, joint_thresholds, score_episodes, scorer_class
    from ..ood.calibration import coverage_summary, default_episodes, reference_set
    from ..ood.plots import plot_calibration
    from ..ood.recon import fit_episode_count
    from ..pipeline import Pipeline
    from ..preflight import check_alpha, check_dataset_for_policy
    from ..sources.dataset import open_dataset, select_episodes

    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha {args.alpha} must be within (0, 1)")
    if args.reference_max_gb is not None and not args.reference_max_gb > 0:
        raise UsageError(f"--reference-max-gb {args.reference_max_gb} must be > 0")
    from ..hub import copy_sae, locate_sae, upload_sae

    sae = locate_sae(args.sae_path)
    out, repo_id = output_location(args, sae)
    dataset = open_dataset(args.dataset_repo_id, args.root)
    engine_config = IntrospectionConfig(device=args.device, **flags.model_options(args))
    pipe = Pipeline.load(
        args.policy_path, str(sae.path), device=args.device, engine_config=engine_config, load_ood=False
    )
    if pipe.extractor is None:
        raise ModelError(f"--sae-path {args.sae_path} loaded no SAE")
    episodes = args.episodes
    if not episodes:
        episodes = default_episodes(pipe.extractor.sae.config.extra, dataset)
        if episodes:
            log.info("calibrating on the SAE's held-out episodes %s", episodes)
    episodes = select_episodes(dataset, episodes)
    frames = check_dataset_for_policy(dataset, pipe.engine, episodes, args.policy_path)
    check_alpha(
        sum(fit_episode_count(args.score, list(frames.values()))),
        args.alpha,
        f"calibration episodes {episodes} of {args.dataset_repo_id}",
    )
    reference = None
    if args.score in ("token_knn", "patch_knn"):
        ref, ref_episodes = reference_set(
            pipe.extractor.sae.config.extra,
            dataset,
            episodes,
            args.score,
            args.reference_root,
            args.reference_episodes,
            args.reference_stride,
            args.dataset_repo_id,
        )
        check_dataset_for_policy(ref, pipe.engine, ref_episodes, args.policy_path)
        reference = (ref, ref_episodes)
    if args.reference_nuisance < 0:
        raise UsageError(f"--reference-nuisance {args.reference_nuisance} must be >= 0")
    options = {
        "knn_k": args.knn_k,
        "stride": args.reference_stride,
        "batch_size": args.batch_size,
        "nuisance_variants": args.reference_nuisance,
        "max_bytes": None if args.reference_max_gb is None else args.reference_max_gb * 1e9,
    }
    if args.output_dir and out.parent.resolve() != sae.path.resolve():
        copy_sae(sae.path, out.parent, with_ood=False)  # the SAE's files beside the OOD files written below
    job = FitJob(pipe, dataset, episodes, reference, options)
    fitted = scorer_class(args.score).fit(job)
    fields = fitted.scorer.save(out.parent)
    del fitted.scorer  # scoring below loads what was saved (a reference is mapped, not held twice)
    signals = [
        {"score": name, "threshold": 0.0, **scorer_class(name).fit(job).scorer.save(out.parent)}
        for name in dict.fromkeys(args.signals)
        if name != args.score
    ]
    pipe.ood = OODParams(
        threshold=0.0,
        score=args.score,
        **fields,
        source_dir=str(out.parent),
        signals=signals,
        policy_fingerprint=pipe.engine.fingerprint,
    )
    from ..nuisance import NuisanceRange

    eps = score_episodes(
        pipe,
        dataset,
        fitted.threshold_episodes,
        args.batch_size,
        leave_out_own_episode=fitted.leave_out_own_episode,
        nuisance=NuisanceRange() if args.reference_nuisance else None,
    )
    covered = np.concatenate([~e.uncovered for e in eps])
    scores = np.concatenate([e.scores for e in eps])[covered]
    if any(e.coverage is not None for e in eps):
        fields["coverage"] = coverage_summary(eps)
    try:
        check_alpha(scores.size, args.alpha, "the covered calibration frames")
        params = calibrate(scores, args.alpha)
        if signals:
            per_signal = {args.score: scores} | {
                s["score"]: np.concatenate([e.signals[s["score"]] for e in eps])[covered] for s in signals
            }
            thresholds, tau = joint_thresholds(per_signal, args.alpha)
            params.threshold = thresholds[args.score]
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
    params.score = args.score
    params.dataset = str(args.root or args.dataset_repo_id)
    params.episodes = [e.episode for e in eps]
    params.policy, params.policy_fingerprint = str(args.policy_path), pipe.engine.fingerprint
    params.save(out)
    png = plot_calibration(
        scores,
        params.threshold,
        args.alpha,
        out.with_name("ood_calibration.png"),
        f"{args.dataset_repo_id}: {len(eps)} episodes, {args.score}",
    )
    result = {
        "ood_params": str(out),
        "plot": str(png),
        "score": args.score,
        "threshold": round(params.threshold, 6),
        "alpha": params.alpha,
        "frames": params.n_calibration,
        "empirical_rate_on_calibration": round(float(np.mean(scores > params.threshold)), 6),
    }
    if params.coverage:
        result["uncovered_frames_excluded"] = params.coverage["excluded_frames"]
    if params.signals:
        result["signals"] = {s["score"]: round(s["threshold"], 6) for s in params.signals}
        result["empirical_rate_on_calibration"] = round(
            float(
                np.mean(
                    np.max(
                        np.stack(
                            [per_signal[args.score] / params.threshold]
                            + [per_signal[s["score"]] / s["threshold"] for s in params.signals]
                        ),
                        axis=0,
                    )
                    > 1.0
                )
            ),
            6,
        )
    if args.upload_to_hub and repo_id is not None:  # output_location refused an upload without one
        result["uploaded"] = upload_sae(
            out.parent, repo_id, private=args.hub_private, commit_message="Upload SAE calibrated with pai calibrate-ood"
        )
    print(json.dumps(result, indent=2))
    return 0
