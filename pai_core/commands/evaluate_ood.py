"""``pai evaluate-ood``: how well the calibrated OOD score separates in-distribution from OOD episodes."""

from __future__ import annotations

import argparse
import json

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate-ood",
        help="AUROC, TPR, false alarms and detection delay of the OOD detector",
        description="Score in-distribution (--id) and out-of-distribution (--ood) datasets through the "
        "pipeline with the calibrated threshold and alarm policy. Writes "
        "ood_evaluation.json and ood_evaluation.png.",
    )
    flags.add_sae_path(p, help="SAE folder (with ood_params.json from calibrate-ood) or hub id")
    flags.add_policy_path(p)
    p.add_argument(
        "--id",
        nargs="+",
        required=True,
        metavar="ROOT_OR_ID",
        help="in-distribution datasets: local dataset directories or repo ids",
    )
    p.add_argument("--ood", nargs="+", required=True, metavar="ROOT_OR_ID", help="out-of-distribution datasets")
    flags.add(
        p,
        "--datasets-dir",
        old=["--root"],
        default=None,
        metavar="DIR",
        help="folder holding local copies of repo ids (DIR/<repo id>)",
    )
    flags.add_indices(p, "--id-episodes", "episodes of the --id datasets, e.g. 0,2,5-7 (default all)")
    flags.add_ood_params_path(
        p, "ood_params.json (default: SAE_PATH/ood_params.json)", old=["--ood-params"], default=""
    )
    p.add_argument(
        "--alarm-n", type=int, default=3, help="frames above threshold among the last M that raise the alarm"
    )
    p.add_argument("--alarm-m", type=int, default=5, help="alarm window in frames")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward")
    flags.add_device(p)
    flags.add_model_args(p)
    flags.add_output_dir(p, "where to write the JSON and PNG (default: SAE_PATH)", required=False, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..hub import locate_sae
    from ..ood.evaluate import EvaluationJob, evaluate_ood

    sae = locate_sae(args.sae_path)  # a hub id: its snapshot holds ood_params.json
    if sae.repo_id and not args.output_dir:
        raise UsageError(f"--sae-path {args.sae_path} is a hub repo (a read-only snapshot): pass --output-dir")
    summary = evaluate_ood(
        EvaluationJob(
            sae.path,
            args.policy_path,
            args.id,
            args.ood,
            output_dir=args.output_dir or sae.path,
            ood_params_path=args.ood_params_path or None,
            datasets_dir=args.datasets_dir,
            id_episodes=args.id_episodes or None,
            alarm_n=args.alarm_n,
            alarm_m=args.alarm_m,
            batch_size=args.batch_size,
            device=args.device,
            model_options=flags.model_options(args),
        )
    )
    print(json.dumps(summary, indent=2))
    return 0
