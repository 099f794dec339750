"""``pai record-features``: SAE feature activations of dataset episodes to Parquet."""

from __future__ import annotations

import argparse

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record-features",
        help="record per-frame SAE feature activations of dataset episodes to Parquet",
        description="Run every frame of the chosen episodes through the policy and SAE (the same pipeline as "
        "the node and replay) and write activations.parquet (sparse feature activations and, per "
        "camera, where each active feature peaks) and record.json to --output-dir.",
    )
    flags.add_dataset(p)
    flags.add_episodes(p)
    flags.add_policy_path(p)
    flags.add_sae_path(p)
    flags.add_output_dir(p, "folder for activations.parquet and record.json")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    p.add_argument(
        "--min-activation",
        type=float,
        default=0.0,
        help="store a feature only above this activation (default 0: every non-zero one)",
    )
    flags.add_device(p)
    flags.add_model_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..analysis.record import PARQUET_NAME, RecordConfig, record_features

    meta = record_features(
        RecordConfig(
            dataset_repo_id=args.dataset_repo_id,
            root=args.root,
            episodes=args.episodes,
            policy_path=args.policy_path,
            sae_path=args.sae_path,
            output_dir=args.output_dir,
            batch_size=args.batch_size,
            device=args.device,
            min_activation=args.min_activation,
            **flags.model_options(args),
        )
    )
    print(  # the result, on stdout
        f"recorded {meta['n_frames']} frames of {len(meta['episodes'])} episodes ({meta['frames_missing']} missing), "
        f"{meta['n_latents']} features -> {args.output_dir}/{PARQUET_NAME}"
    )
    return 0 if meta["frames_missing"] == 0 else 1
