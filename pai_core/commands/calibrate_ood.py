"""``pai calibrate-ood``: conformal OOD threshold from held-out in-distribution episodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..configs import OOD_SCORES, OOD_SIGNALS
from . import args as flags

if TYPE_CHECKING:
    from ..hub import SaeLocation


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
        choices=OOD_SCORES,
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
        choices=OOD_SIGNALS,
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
    from ..hub import locate_sae, upload_sae
    from ..ood.calibration import CalibrationJob, calibrate_ood

    sae = locate_sae(args.sae_path)
    out, repo_id = output_location(args, sae)
    result = calibrate_ood(
        CalibrationJob(
            sae.path,
            args.policy_path,
            args.dataset_repo_id,
            args.root,
            out,
            copy_sae=bool(args.output_dir),
            episodes=args.episodes or None,
            alpha=args.alpha,
            score=args.score,
            signals=args.signals,
            reference_root=args.reference_root,
            reference_episodes=args.reference_episodes or None,
            knn_k=args.knn_k,
            reference_stride=args.reference_stride,
            reference_max_gb=args.reference_max_gb,
            reference_nuisance=args.reference_nuisance,
            batch_size=args.batch_size,
            device=args.device,
            model_options=flags.model_options(args),
        )
    )
    if args.upload_to_hub and repo_id is not None:  # output_location refused an upload without one
        result["uploaded"] = upload_sae(
            out.parent, repo_id, private=args.hub_private, commit_message="Upload SAE calibrated with pai calibrate-ood"
        )
    print(json.dumps(result, indent=2))
    return 0
