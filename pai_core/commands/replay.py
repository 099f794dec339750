"""``pai replay``: a rosbag2 recording or a LeRobot episode through the live node's pipeline, written
out as overlay videos, Parquet tables, an MCAP of the node's topics and an HTML report."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "replay", help="replay a rosbag or a LeRobot episode: videos, Parquet, MCAP, report",
        description="Replay a rosbag2 recording (--bag) or a LeRobot dataset episode (--dataset-repo-id) "
                    "through the same pipeline as the live node.",
        epilog="examples:\n"
               "  pai replay --bag rec/ --config config/introspect.yaml --output-dir out/replay\n"
               "  pai replay --dataset-repo-id lerobot/svla_so101_pickplace --episode-id 0 \\\n"
               "      --policy-path outputs/train/act/pretrained_model --output-dir out/ep0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source (one of)")
    src.add_argument("--bag", help="rosbag2 folder (metadata.yaml) or a .mcap / .db3 file")
    src.add_argument("--dataset-repo-id", help="LeRobot dataset repo id (local under --root, else the hub)")
    p.add_argument("--root", help="local dataset root directory")
    p.add_argument("--episode-id", type=int, default=0, help="dataset episode to replay (default 0)")
    p.add_argument("--config", default=None,
                   help="settings file (ROS parameters YAML, as the node); required for --bag "
                        "(default config/introspect.yaml): topic mapping, models, overlay, alarm")
    p.add_argument("--policy-path", help="LeRobot pretrained_model directory or hub id (default: from --config)")
    p.add_argument("--sae-path", help="SAE directory ('' for none; default: from --config)")
    p.add_argument("--ood-params-path", help="ood_params.json (default: beside the SAE)")
    p.add_argument("--policy-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="policy config fields to override, e.g. temporal_ensemble_coeff=0.01 (JSON values)")
    p.add_argument("--device", help="torch device (default: from --config, else cpu)")
    p.add_argument("--output-dir", required=True, help="directory for every output")
    p.add_argument("--batch-size", type=int, default=None,
                   help="observations per forward pass (default 8; 1 with --foxglove, so each frame is sent as soon "
                        "as it is computed)")
    p.add_argument("--no-video", action="store_true", help="skip the overlay videos")
    p.add_argument("--no-mcap", action="store_true", help="skip replay.mcap")
    p.add_argument("--foxglove", nargs="?", type=int, const=8765, default=None, metavar="PORT",
                   help="serve the replay live on ws://HOST:PORT for Foxglove while it runs (default port 8765)")
    p.add_argument("--foxglove-host", default="127.0.0.1", metavar="HOST",
                   help="interface the Foxglove server listens on (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument("--foxglove-keep", nargs="?", type=float, const=-1.0, default=None, metavar="SECONDS",
                   help="after the replay, keep serving it (play, pause, seek, speed in Foxglove) until Ctrl-C, or "
                        "for SECONDS; implies --foxglove")
    p.add_argument("--publish", action="store_true", help="also publish the node's topics with rclpy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _settings(args):
    import dataclasses
    from pathlib import Path

    from ..settings import PaiSettings, load_settings

    path = args.config or ("config/introspect.yaml" if args.bag else None)
    if path is None:
        return PaiSettings(policy_path=args.policy_path or "", sae_path=args.sae_path or "",
                           ood_params_path=args.ood_params_path or "", device=args.device or "cpu")
    if not Path(path).is_file():
        from ..errors import InputError

        raise InputError(f"Settings file {path} does not exist; pass --config with the node's parameters YAML")
    settings = load_settings(path)
    changes = {k: v for k, v in (("policy_path", args.policy_path), ("sae_path", args.sae_path),
                                  ("ood_params_path", args.ood_params_path), ("device", args.device)) if v is not None}
    if args.sae_path is not None and args.ood_params_path is None:
        changes["ood_params_path"] = ""
    return dataclasses.replace(settings, **changes)


def _apply_overrides(pipeline, overrides: list[str]) -> None:
    from ..errors import InputError

    cfg = pipeline.engine.policy.config
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not hasattr(cfg, key):
            raise InputError(f"--policy-overrides {item!r}: expected KEY=VALUE with KEY a field of {type(cfg).__name__}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        setattr(cfg, key, value)


def run(args) -> int:
    from ..errors import InputError
    from ..pipeline import Pipeline
    from ..replay.api import ReplayOptions, replay_bag, replay_episode

    if bool(args.bag) == bool(args.dataset_repo_id):
        raise InputError("pass exactly one source: --bag PATH or --dataset-repo-id ID")
    settings = _settings(args)
    if not settings.policy_path:
        raise InputError("no policy: pass --policy-path or set policy_path in --config")
    pipeline = Pipeline.from_settings(settings)
    _apply_overrides(pipeline, args.policy_overrides)
    options = ReplayOptions(
        output_dir=args.output_dir, batch_size=args.batch_size, video=not args.no_video, mcap=not args.no_mcap,
        foxglove_port=_foxglove_port(args), foxglove_host=args.foxglove_host,
        foxglove_keep=args.foxglove_keep is not None, publish=args.publish, overlay=settings.overlay,
        progress=not args.no_progress,
    )
    if args.bag:
        result = replay_bag(args.bag, settings, pipeline, options)
    else:
        from ..sources.dataset import open_dataset

        dataset = open_dataset(args.dataset_repo_id, args.root)
        result = replay_episode(dataset, args.episode_id, pipeline, options)
    acc, stats = result.accounting, result.stats
    for note in acc.notes:
        log.warning("%s", note)
    if acc.frames_skipped:
        log.warning("skipped frames: %s", acc.skip_summary())
    if acc.frames_processed == 0:
        raise InputError(f"replayed no frame of {acc.frames_total}: {acc.skip_summary() or 'the source holds none'} "
                         f"(report: {result.output_dir / 'report.html'})")
    print(f"replayed {acc.frames_processed} frames ({sum(acc.frames_skipped.values())} skipped) in "
          f"{stats.wall_s:.1f} s: {stats.fps:.1f} frames/s, {stats.realtime_factor:.1f}x real time")
    for name, what in result.files.items():
        print(f"  {result.output_dir / name}: {what}")
    _keep_serving(result, args.foxglove_keep)
    return 0


def _foxglove_port(args) -> int | None:
    """--foxglove PORT, or the default port when only --foxglove-keep is given."""
    if args.foxglove is None and args.foxglove_keep is not None:
        return 8765
    return args.foxglove


def _keep_serving(result, keep_s: float | None) -> None:
    """--foxglove-keep: serve the finished replay with playback controls until Ctrl-C (or ``keep_s``)."""
    server = result.foxglove
    if server is None:
        return
    until = "Ctrl-C" if keep_s is None or keep_s < 0 else f"{keep_s:g} s or Ctrl-C"
    print(f"serving the replay on {server.url} with playback controls (play, pause, seek, speed) until {until}",
          flush=True)
    try:
        server.wait(None if keep_s is None or keep_s < 0 else keep_s)
    except KeyboardInterrupt:
        print("stopped serving")
    finally:
        server.close()
