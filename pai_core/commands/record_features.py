"""``pai record-features``: SAE feature activations of dataset episodes to Parquet."""

from __future__ import annotations

import argparse


def parse_episodes(text: str) -> list[int]:
    """ "0,2,5-7" -> [0, 2, 5, 6, 7]."""
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--episodes {text!r}: expected indices like 0,2,5-7") from None
    return out


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record-features",
        help="record per-frame SAE feature activations of dataset episodes to Parquet",
        description="Run every frame of the chosen episodes through the policy and SAE (the same pipeline as "
        "the node and replay) and write activations.parquet (sparse feature activations and, per "
        "camera, where each active feature peaks) and record.json to --output-dir.",
    )
    p.add_argument("--dataset-repo-id", required=True, help="LeRobot dataset id (local with --root)")
    p.add_argument("--root", default=None, help="local dataset root folder")
    p.add_argument("--episodes", type=parse_episodes, default=None, help="episodes, e.g. 0,2,5-7 (default: all)")
    p.add_argument("--policy-path", required=True, help="LeRobot pretrained_model directory or hub id")
    p.add_argument("--sae-path", required=True, help="SAE directory (pai train-sae output)")
    p.add_argument("--output-dir", required=True, help="folder for activations.parquet and record.json")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    p.add_argument(
        "--min-activation",
        type=float,
        default=0.0,
        help="store a feature only above this activation (default 0: every non-zero one)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return p


def run(args) -> int:
    import logging

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
        )
    )
    logging.getLogger("pai").info(
        "recorded %d frames of %d episodes (%d missing), %d features -> %s/%s",
        meta["n_frames"],
        len(meta["episodes"]),
        meta["frames_missing"],
        meta["n_latents"],
        args.output_dir,
        PARQUET_NAME,
    )
    return 0 if meta["frames_missing"] == 0 else 1
