"""``pai analyse-features``: rank recorded features and render their top frames, clips and an index page."""

from __future__ import annotations

import argparse

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    from ..configs import RANK_BY

    p = sub.add_parser(
        "analyse-features",
        help="rank recorded features; top frames with feature maps, clips, HTML index",
        description="Read a record-features folder, rank every feature (variance, frequency, mean or max over "
        "frames; dead and always-on ones flagged) and write, per selected feature, a JSON of its "
        "top-activating frames, thumbnails with the feature's spatial map overlaid and a clip; "
        "plus summary.json, feature_stats.csv and index.html.",
    )
    p.add_argument("--record-dir", required=True, help="pai record-features output folder")
    flags.add_output_dir(p, "analysis folder (created)")
    p.add_argument("--top-features", type=int, default=20, help="ranked features to render (default 20)")
    flags.add_indices(p, "--features", "render these feature ids instead, e.g. 12,40-45", metavar="ID")
    p.add_argument("--top-frames", type=int, default=8, help="top-activating frames per feature (default 8)")
    p.add_argument("--rank-by", choices=RANK_BY, default="variance", help="ranking statistic (default variance)")
    p.add_argument(
        "--always-on",
        type=float,
        default=0.99,
        help="flag features active in at least this share of frames (default 0.99)",
    )
    p.add_argument("--include-always-on", action="store_true", help="rank always-on features too")
    p.add_argument(
        "--min-frame-gap",
        type=int,
        default=0,
        help="top frames of a feature at least this many frames apart in an episode (default 0)",
    )
    p.add_argument("--clip-radius", type=int, default=8, help="frames each side of a top frame in its clip (0: none)")
    p.add_argument("--clips-per-feature", type=int, default=1, help="top frames that get a clip (default 1)")
    p.add_argument("--clip-format", choices=("mp4", "gif"), default="mp4", help="clip format (default mp4, H.264)")
    p.add_argument("--thumb-height", type=int, default=160, help="camera image height in pictures (default 160)")
    p.add_argument("--colormap", default="jet", help="heatmap colormap (jet, turbo, inferno, viridis, hot)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default 0.5)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass when rendering")
    flags.add_device(p)
    flags.add_policy_path(p, required=False, default="", help="override the policy path stored in record.json")
    flags.add_sae_path(p, required=False, default="", help="override the SAE path stored in record.json")
    p.add_argument("--root", default="", metavar="DIR", help="override the dataset folder stored in record.json")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analysis.analyse import AnalyseConfig, analyse_features
    from ..errors import UsageError
    from ..overlay import COLORMAPS

    if args.colormap not in COLORMAPS:
        raise UsageError(f"--colormap {args.colormap!r} is not one of {sorted(COLORMAPS)}")
    summary = analyse_features(
        AnalyseConfig(
            record_dir=args.record_dir,
            output_dir=args.output_dir,
            top_features=args.top_features,
            features=args.features,
            top_frames=args.top_frames,
            rank_by=args.rank_by,
            always_on=args.always_on,
            include_always_on=args.include_always_on,
            min_frame_gap=args.min_frame_gap,
            clip_radius=args.clip_radius,
            clips_per_feature=args.clips_per_feature,
            clip_format=args.clip_format,
            thumb_height=args.thumb_height,
            colormap=args.colormap,
            alpha=args.alpha,
            batch_size=args.batch_size,
            device=args.device,
            policy_path=args.policy_path,
            sae_path=args.sae_path,
            dataset_root=args.root,
        )
    )
    c = summary["counts"]
    print(  # the result, on stdout
        f"{summary['n_frames']} frames, {summary['n_latents']} features: {c['dead']} dead, {c['always_on']} always "
        f"on; rendered {len(summary['features'])} -> {Path(args.output_dir) / 'index.html'}"
    )
    return 0
