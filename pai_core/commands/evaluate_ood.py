"""``pai evaluate-ood``: how well the calibrated OOD score separates in-distribution from OOD episodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate-ood",
        help="AUROC, TPR, false alarms and detection delay of the OOD detector",
        description="Score in-distribution (--id) and out-of-distribution (--ood) datasets through the "
        "pipeline with the calibrated threshold and alarm policy. Writes "
        "ood_evaluation.json and ood_evaluation.png.",
    )
    p.add_argument("--sae-path", required=True, help="SAE directory (with ood_params.json from calibrate-ood)")
    p.add_argument("--policy-path", required=True, help="LeRobot pretrained_model directory or hub id")
    p.add_argument(
        "--id",
        nargs="+",
        required=True,
        metavar="ROOT_OR_ID",
        help="in-distribution datasets: local dataset directories or repo ids",
    )
    p.add_argument("--ood", nargs="+", required=True, metavar="ROOT_OR_ID", help="out-of-distribution datasets")
    p.add_argument("--root", default=None, help="directory holding local copies of repo ids (ROOT/<repo id>)")
    p.add_argument(
        "--id-episodes", type=int, nargs="*", default=None, help="episodes of the --id datasets (default all)"
    )
    p.add_argument("--ood-params", default="", help="ood_params.json (default: SAE_PATH/ood_params.json)")
    p.add_argument(
        "--alarm-n", type=int, default=3, help="frames above threshold among the last M that raise the alarm"
    )
    p.add_argument("--alarm-m", type=int, default=5, help="alarm window in frames")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--output-dir", default=None, help="where to write the JSON and PNG (default: SAE_PATH)")
    return p


def open_spec(spec: str, root: str | None):
    """A dataset given as a local directory, as ROOT/<repo id>, or as a hub repo id."""
    from ..sources.dataset import open_dataset

    path = Path(spec)
    if path.is_dir():
        return open_dataset(path.name, path)
    if root and (Path(root) / spec).is_dir():
        return open_dataset(spec, Path(root) / spec)
    return open_dataset(spec, None)


def plot_evaluation(id_eps, ood_eps, result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    thr = result["threshold"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    id_s = np.concatenate([e.scores for e in id_eps])
    ood_s = np.concatenate([e.scores for e in ood_eps])
    bins = np.histogram_bin_edges(np.concatenate([id_s, ood_s]), bins=60)
    ax1.hist(id_s, bins=bins, alpha=0.7, color="#4c72b0", label=f"in-distribution ({id_s.size} frames)")
    ax1.hist(ood_s, bins=bins, alpha=0.7, color="#dd8452", label=f"OOD ({ood_s.size} frames)")
    ax1.axvline(thr, color="#c44e52", lw=2, label=f"threshold {thr:.4g}")
    ax1.set_xlabel("OOD score")
    ax1.set_ylabel("frames")
    ax1.set_title(
        f"AUROC {result['auroc']:.3f}, TPR {result['tpr_at_threshold']:.2f}, "
        f"FPR {result['false_positive_rate_at_threshold']:.3f}"
    )
    ax1.legend()
    for eps, color in ((id_eps, "#4c72b0"), (ood_eps, "#dd8452")):
        for e in eps:
            ax2.plot(e.scores, color=color, alpha=0.6, lw=1)
            first = np.flatnonzero(e.alarm)
            if first.size:
                ax2.plot(first[0], e.scores[first[0]], "v", color="#c44e52")
    ax2.axhline(thr, color="#c44e52", lw=1.5, ls="--")
    ax2.set_xlabel("frame in episode")
    ax2.set_ylabel("OOD score")
    ax2.set_title("episodes (blue: in-distribution, orange: OOD; v: alarm)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args) -> int:
    from ..alarm import AlarmConfig
    from ..errors import ConfigError, ModelError, UsageError
    from ..ood import evaluate_episodes, score_episodes
    from ..pipeline import Pipeline

    try:
        alarm = AlarmConfig(n=args.alarm_n, m=args.alarm_m, latch=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    from ..hub import locate_sae

    sae = locate_sae(args.sae_path)  # a hub id: its snapshot holds ood_params.json
    if sae.repo_id and not args.output_dir:
        raise UsageError(f"--sae-path {args.sae_path} is a hub repo (a read-only snapshot): pass --output-dir")
    params = Path(args.ood_params) if args.ood_params else sae.path / "ood_params.json"
    if not params.is_file():
        raise ModelError(f"No OOD parameters at {params}: run `pai calibrate-ood --sae-path {args.sae_path} ...` first")
    from ..outputs import prepare_output_dir
    from ..preflight import check_dataset_for_policy
    from ..sources.dataset import select_episodes

    pipe = Pipeline.load(args.policy_path, args.sae_path, str(params), device=args.device, alarm=alarm)
    id_sets = [(open_spec(spec, args.root), args.id_episodes) for spec in args.id]
    ood_sets = [(open_spec(spec, args.root), None) for spec in args.ood]
    for ds, episodes in id_sets + ood_sets:  # every dataset checked before the first forward pass
        check_dataset_for_policy(ds, pipe.engine, select_episodes(ds, episodes), args.policy_path)
    id_eps = [e for ds, episodes in id_sets for e in score_episodes(pipe, ds, episodes, args.batch_size)]
    ood_eps = [e for ds, _ in ood_sets for e in score_episodes(pipe, ds, None, args.batch_size)]
    result = evaluate_episodes(id_eps, ood_eps, pipe.threshold)
    result.update(
        {
            "alpha": pipe.ood.alpha,
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
