"""``pai replay``: a rosbag2 recording or a LeRobot episode through the live node's pipeline, written
out as overlay videos, Parquet tables, an MCAP of the node's topics and an HTML report."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from . import args as flags

if TYPE_CHECKING:
    from ..configs import SaliencyConfig
    from ..pipeline import Pipeline
    from ..replay.api import ReplayResult
    from ..settings import PaiSettings

log = logging.getLogger(__name__)


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "replay",
        help="replay a rosbag or LeRobot episodes: videos, Parquet, MCAP, report",
        description="Replay a rosbag2 recording (--bag) or LeRobot dataset episodes (--dataset-repo-id) "
        "through the same pipeline as the live node.",
        epilog="examples:\n"
        "  pai replay --bag rec/ --config config/introspect.yaml --output-dir out/replay\n"
        "  pai replay --dataset-repo-id lerobot/svla_so101_pickplace --episodes 0 \\\n"
        "      --policy-path outputs/train/act/pretrained_model --output-dir out/ep0\n"
        "  pai replay --dataset-repo-id lerobot/svla_so101_pickplace --policy-path DIR \\\n"
        "      --saliency ig --saliency-action-dim 5 --output-dir out/all   # every episode, gripper IG",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (one of)")
    src.add_argument("--bag", help="rosbag2 folder (metadata.yaml) or a .mcap / .db3 file")
    flags.add_dataset(src, required=False)
    flags.add_episodes(
        p,
        help="dataset episodes to replay, e.g. 3 or 0,2,5-7; one: its outputs go straight into --output-dir; "
        "several or none (default: every episode): one episode_<N> folder each and episodes.json",
        old=["--episode-id"],
    )
    p.add_argument(
        "--config",
        default=None,
        help="settings file (ROS parameters YAML, as the node); required for --bag "
        "(default config/introspect.yaml): topic mapping, models, overlay, alarm",
    )
    flags.add_policy_path(p, required=False, help="LeRobot pretrained_model folder or hub id (default: from --config)")
    flags.add_sae_path(p, required=False, help="SAE folder or hub id ('' for none; default: from --config)")
    flags.add_ood_params_path(p)
    flags.add_model_args(p)
    flags.add_device(p, default=None, help="torch device (default: from --config, else cpu)")
    flags.add_output_dir(p, "folder for every output")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="observations per forward pass (default 8; 1 with --foxglove, so each frame is sent as soon "
        "as it is computed)",
    )
    p.add_argument("--no-video", action="store_true", help="skip the overlay videos")
    p.add_argument("--no-mcap", action="store_true", help="skip replay.mcap")
    p.add_argument(
        "--foxglove",
        nargs="?",
        type=int,
        const=8765,
        default=None,
        metavar="PORT",
        help="serve the replay live on ws://HOST:PORT for Foxglove while it runs (default port 8765)",
    )
    p.add_argument(
        "--foxglove-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface the Foxglove server listens on (default 127.0.0.1; 0.0.0.0 for other machines)",
    )
    p.add_argument(
        "--foxglove-keep",
        nargs="?",
        type=float,
        const=-1.0,
        default=None,
        metavar="SECONDS",
        help="after the replay, keep serving it (play, pause, seek, speed in Foxglove) until Ctrl-C, or "
        "for SECONDS; implies --foxglove",
    )
    p.add_argument("--publish", action="store_true", help="also publish the node's topics with rclpy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_saliency_args(p)
    return p


def add_saliency_args(p: argparse.ArgumentParser) -> None:
    from ..configs import AGGREGATIONS, NORMALISATIONS, SaliencyConfig

    d = SaliencyConfig()
    g = p.add_argument_group("saliency (integrated gradients; the seed's gradient saliency)")
    g.add_argument(
        "--saliency",
        choices=["none", "ig"],
        default="none",
        help="'ig': also write <camera>_saliency.mp4 and saliency.parquet (one backward pass per "
        "integration step: about --saliency-steps x the cost of the replay)",
    )
    g.add_argument(
        "--saliency-aggregation",
        choices=AGGREGATIONS,
        default=d.aggregation,
        help="how the selected actions become one number: sum (default) or norm",
    )
    g.add_argument(
        "--saliency-action-step",
        type=int,
        default=None,
        metavar="T",
        help="only step T of the action chunk (0: the next action; default: every step)",
    )
    g.add_argument(
        "--saliency-action-dim",
        type=int,
        default=None,
        metavar="A",
        help="only action dimension A, e.g. the gripper (default: every dimension)",
    )
    g.add_argument("--saliency-steps", type=int, default=d.steps, help=f"integration steps (default {d.steps})")
    g.add_argument(
        "--saliency-batch-size",
        type=int,
        default=d.batch_size,
        help=f"interpolated inputs per forward/backward pass (default {d.batch_size})",
    )
    g.add_argument(
        "--saliency-normalisation",
        choices=NORMALISATIONS,
        default=d.normalisation,
        help="per-frame display scale over all cameras and the state: percentile (default) or linear",
    )
    g.add_argument(
        "--saliency-percentile",
        type=float,
        default=d.percentile,
        help=f"clip percentile of percentile normalisation (default {d.percentile})",
    )


def saliency_config(args: argparse.Namespace) -> SaliencyConfig | None:
    """The ``SaliencyConfig`` of the ``--saliency-*`` flags, or None without ``--saliency ig``."""
    from ..errors import UsageError
    from ..saliency import SaliencyConfig

    if args.saliency == "none":
        return None
    try:
        return SaliencyConfig(
            aggregation=args.saliency_aggregation,
            action_step=args.saliency_action_step,
            action_dim=args.saliency_action_dim,
            steps=args.saliency_steps,
            batch_size=args.saliency_batch_size,
            normalisation=args.saliency_normalisation,
            percentile=args.saliency_percentile,
        )
    except ValueError as exc:
        raise UsageError(f"--saliency ig: {exc}") from exc


def _settings(args: argparse.Namespace) -> PaiSettings:
    """The settings file (or the defaults), with the model flags given on the command line on top."""
    import dataclasses
    from pathlib import Path

    from ..policy import parse_overrides
    from ..settings import PaiSettings, load_settings

    parse_overrides(args.policy_overrides or [])  # a malformed KEY=VALUE is named as the flag's
    flags_given = {
        k: v
        for k, v in (
            ("policy_path", args.policy_path),
            ("sae_path", args.sae_path),
            ("ood_params_path", args.ood_params_path),
            ("device", args.device),
            ("model_dtype", args.model_dtype),
            ("policy_overrides", args.policy_overrides),
        )
        if v is not None
    }
    path = args.config or ("config/introspect.yaml" if args.bag else None)
    if path is None:
        return PaiSettings(**flags_given)
    if not Path(path).is_file():
        from ..errors import UsageError

        raise UsageError(f"Settings file {path} does not exist; pass --config with the node's parameters YAML")
    settings = load_settings(path)
    if args.sae_path is not None and args.ood_params_path is None:
        flags_given["ood_params_path"] = ""
    return dataclasses.replace(settings, **flags_given)


def load_pipeline(settings: PaiSettings, args: argparse.Namespace) -> Pipeline:
    """``Pipeline.from_settings``: the settings carry ``--model-dtype`` and ``--policy-overrides`` (``_settings``)."""
    from ..pipeline import Pipeline

    return Pipeline.from_settings(settings)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..replay.api import ReplayOptions, replay_bag, replay_episode, replay_episodes

    if bool(args.bag) == bool(args.dataset_repo_id):
        raise UsageError("pass exactly one source: --bag PATH or --dataset-repo-id ID")
    settings = _settings(args)
    if not settings.policy_path:
        raise UsageError("no policy: pass --policy-path or set policy_path in --config")
    if args.bag and args.episodes is not None:
        raise UsageError("--episodes selects dataset episodes; a --bag is replayed whole")
    saliency = saliency_config(args)
    if args.foxglove_keep is not None and (args.episodes is None or len(args.episodes) > 1) and not args.bag:
        raise UsageError("--foxglove-keep serves one replay: pick one dataset episode with --episodes N")
    pipeline = load_pipeline(settings, args)
    options = ReplayOptions(
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        video=not args.no_video,
        mcap=not args.no_mcap,
        foxglove_port=_foxglove_port(args),
        foxglove_host=args.foxglove_host,
        foxglove_keep=args.foxglove_keep is not None,
        publish=args.publish,
        overlay=settings.overlay,
        progress=not args.no_progress,
        saliency=saliency,
    )
    if args.bag:
        result = replay_bag(args.bag, settings, pipeline, options)
    else:
        from ..sources.dataset import open_dataset

        dataset = open_dataset(args.dataset_repo_id, args.root)
        if args.episodes is None or len(args.episodes) > 1:
            results = replay_episodes(dataset, args.episodes, pipeline, options)
            for episode, result in results.items():
                _report(result, f"episode {episode}: ")
            print(f"  {options.output_dir}/episodes.json: {len(results)} episodes")
            return 0
        result = replay_episode(dataset, args.episodes[0], pipeline, options)
    _report(result)
    _keep_serving(result, args.foxglove_keep)
    return 0


def _report(result: ReplayResult, prefix: str = "") -> None:
    from ..errors import ObservationError

    acc, stats = result.accounting, result.stats
    for note in acc.notes:
        log.warning("%s", note)
    if acc.frames_skipped:
        log.warning("skipped frames: %s", acc.skip_summary())
    if acc.frames_processed == 0:
        raise ObservationError(
            f"replayed no frame of {acc.frames_total}: {acc.skip_summary() or 'the source holds none'} "
            f"(report: {result.output_dir / 'report.html'})"
        )
    print(
        f"{prefix}replayed {acc.frames_processed} frames ({sum(acc.frames_skipped.values())} skipped) in "
        f"{stats.wall_s:.1f} s: {stats.fps:.1f} frames/s, {stats.realtime_factor:.1f}x real time"
    )
    for name, what in result.files.items():
        print(f"  {result.output_dir / name}: {what}")


def _foxglove_port(args: argparse.Namespace) -> int | None:
    """--foxglove PORT, or the default port when only --foxglove-keep is given."""
    if args.foxglove is None and args.foxglove_keep is not None:
        return 8765
    return args.foxglove


def _keep_serving(result: ReplayResult, keep_s: float | None) -> None:
    """--foxglove-keep: serve the finished replay with playback controls until Ctrl-C (or ``keep_s``)."""
    server = result.foxglove
    if server is None:
        return
    until = "Ctrl-C" if keep_s is None or keep_s < 0 else f"{keep_s:g} s or Ctrl-C"
    log.info("serving the replay on %s with playback controls (play, pause, seek, speed) until %s", server.url, until)
    try:
        server.wait(None if keep_s is None or keep_s < 0 else keep_s)
    except KeyboardInterrupt:
        log.info("stopped serving")
    finally:
        server.close()
