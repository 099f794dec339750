"""``pai evaluate-ood``: how well the calibrated OOD score separates in-distribution from OOD episodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    from ..alarm import AlarmConfig
    from ..engine import IntrospectionConfig
    from ..errors import ConfigError, ModelError, UsageError
    from ..ood import evaluate_episodes, score_episodes
    from ..ood.plots import plot_evaluation
    from ..pipeline import Pipeline

    try:
        alarm = AlarmConfig(n=args.alarm_n, m=args.alarm_m, latch=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    from ..hub import locate_sae

    sae = locate_sae(args.sae_path)  # a hub id: its snapshot holds ood_params.json
    if sae.repo_id and not args.output_dir:
        raise UsageError(f"--sae-path {args.sae_path} is a hub repo (a read-only snapshot): pass --output-dir")
    params = Path(args.ood_params_path) if args.ood_params_path else sae.path / "ood_params.json"
    if not params.is_file():
        raise ModelError(f"No OOD parameters at {params}: run `pai calibrate-ood --sae-path {args.sae_path} ...` first")
    from ..outputs import prepare_output_dir
    from ..preflight import check_dataset_for_policy
    from ..sources.dataset import open_dataset_spec, select_episodes

    engine_config = IntrospectionConfig(device=args.device, **flags.model_options(args))
    pipe = Pipeline.load(
        args.policy_path, args.sae_path, str(params), device=args.device, alarm=alarm, engine_config=engine_config
    )
    ood, threshold = pipe.ood, pipe.threshold
    if ood is None or threshold is None:
        raise ModelError(f"{params} loaded no OOD parameters")
    id_sets = [(open_dataset_spec(spec, args.datasets_dir), args.id_episodes) for spec in args.id]
    ood_sets = [(open_dataset_spec(spec, args.datasets_dir), None) for spec in args.ood]
    for ds, episodes in id_sets + ood_sets:  # every dataset checked before the first forward pass
        check_dataset_for_policy(ds, pipe.engine, select_episodes(ds, episodes), args.policy_path)
    id_eps = [e for ds, episodes in id_sets for e in score_episodes(pipe, ds, episodes, args.batch_size)]
    ood_eps = [e for ds, _ in ood_sets for e in score_episodes(pipe, ds, None, args.batch_size)]
    result = evaluate_episodes(id_eps, ood_eps, threshold)
    result.update(
        {
            "alpha": ood.alpha,
            "alarm": {"n": alarm.n, "m": alarm.m, "latch": alarm.latch},
            "id": args.id,
            "ood": args.ood,
        }
    )
    out = Path(args.output_dir or args.sae_path)
    out = prepare_output_dir(out, "evaluation folder (--output-dir)")
    (out / "ood_evaluation.json").write_text(json.dumps(result, indent=2))
    png = plot_evaluation(id_eps, ood_eps, result, out / "ood_evaluation.png")
    summary = {
        k: result[k]
        for k in (
            "auroc",
            "tpr_at_threshold",
            "false_positive_rate_at_threshold",
            "episodes_with_false_alarm",
            "ood_episodes_detected",
            "mean_detection_delay_frames",
        )
    }
    print(json.dumps({**summary, "json": str(out / "ood_evaluation.json"), "plot": str(png)}, indent=2))
    return 0
