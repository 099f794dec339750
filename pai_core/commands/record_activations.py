"""``pai record-activations``: encoder tokens of LeRobot datasets' episodes into safetensors shards."""

from __future__ import annotations

import argparse
import json


def add_dataset_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--dataset-repo-id",
        required=required,
        help="LeRobot dataset repo id (hub id or local name); several: a,b (or the seed's [a,b]), "
        "recorded together as one set of frames",
    )
    p.add_argument(
        "--root",
        default=None,
        help="local copy of the dataset (default: the hub / HF cache); several datasets: r1,r2 in the "
        "order of --dataset-repo-id",
    )
    p.add_argument(
        "--episodes",
        type=int,
        nargs="*",
        default=None,
        help="episode indices of a single dataset (default: all; several datasets: always all)",
    )


def add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames-per-batch", type=int, default=16, help="frames per engine forward")
    p.add_argument("--shard-frames", type=int, default=256, help="frames per shard (bounds memory)")
    p.add_argument("--layer", type=int, default=-1, help="encoder layer whose tokens are recorded (-1: last)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="storage type")
    p.add_argument(
        "--token-sampling",
        choices=["all", "blocks"],
        default="all",
        help="'blocks' keeps latent+state tokens and averages camera tokens in blocks (the seed's way)",
    )
    p.add_argument("--block", type=int, default=2, help="block edge in tokens for --token-sampling blocks")
    p.add_argument(
        "--model-dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="dtype the policy runs in (default float32, as saved)",
    )


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record-activations",
        help="record a policy's encoder tokens over dataset episodes",
        description="Run the engine over LeRobot dataset episodes (batched) and store encoder tokens "
        "in safetensors shards with episode/frame index. Re-running resumes: finished "
        "shards are skipped.",
    )
    add_dataset_args(p)
    p.add_argument("--policy-path", required=True, help="LeRobot pretrained_model directory or hub id")
    p.add_argument("--output-dir", required=True, help="directory for the shards and activations.json")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    add_record_args(p)
    return p


def record_config(args):
    from ..activations import RecordConfig
    from ..errors import ConfigError

    try:
        return RecordConfig(
            batch_size=args.frames_per_batch,
            shard_frames=args.shard_frames,
            layer=args.layer,
            dtype=args.dtype,
            sampling=args.token_sampling,
            block=args.block,
            device=args.device,
            model_dtype=args.model_dtype,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def run(args) -> int:
    from ..activations import open_datasets, record_activations

    datasets = open_datasets(args.dataset_repo_id, args.root)
    summary = record_activations(datasets, args.policy_path, args.output_dir, args.episodes, record_config(args))
    print(json.dumps(summary, indent=2))
    return 0
