"""``pai record-activations``: encoder tokens of LeRobot datasets' episodes into safetensors shards."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from . import args as flags

if TYPE_CHECKING:
    from ..activations import RecordConfig


def add_dataset_args(p: argparse._ActionsContainer, required: bool = True) -> None:
    flags.add_dataset(
        p,
        required=required,
        repo_help="LeRobot dataset repo id (hub id or local name); several: a,b (or the seed's [a,b]), "
        "recorded together as one set of frames",
        root_help="local copy of the dataset (default: the hub / HF cache); several datasets: r1,r2 in the "
        "order of --dataset-repo-id",
    )
    flags.add_episodes(
        p, help="episodes of a single dataset, e.g. 0,2,5-7 (default: all; several datasets: always all)"
    )


def add_record_args(p: argparse._ActionsContainer) -> None:
    p.add_argument("--frames-per-batch", type=int, default=16, help="frames per engine forward")
    p.add_argument("--shard-frames", type=int, default=256, help="frames per shard (bounds memory)")
    p.add_argument("--layer", type=int, default=-1, help="encoder layer whose tokens are recorded (-1: the last)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="storage type")
    p.add_argument(
        "--token-sampling",
        choices=["all", "blocks"],
        default="all",
        help="'blocks' keeps latent+state tokens and averages camera tokens in blocks (the seed's way)",
    )
    p.add_argument("--block", type=int, default=2, help="block edge in tokens for --token-sampling blocks")
    flags.add_model_args(p)


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record-activations",
        help="record a policy's encoder tokens over dataset episodes",
        description="Run the engine over LeRobot dataset episodes (batched) and store encoder tokens "
        "in safetensors shards with episode/frame index. Re-running resumes: finished "
        "shards are skipped.",
    )
    add_dataset_args(p)
    flags.add_policy_path(p)
    flags.add_output_dir(p, "folder for the shards and activations.json")
    flags.add_device(p)
    add_record_args(p)
    return p


def record_config(ns: argparse.Namespace) -> RecordConfig:
    from ..activations import RecordConfig
    from ..errors import ConfigError

    try:
        return RecordConfig(
            batch_size=ns.frames_per_batch,
            shard_frames=ns.shard_frames,
            layer=ns.layer,
            dtype=ns.dtype,
            sampling=ns.token_sampling,
            block=ns.block,
            device=ns.device,
            **flags.model_options(ns),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from ..activations import open_datasets, record_activations

    datasets = open_datasets(args.dataset_repo_id, args.root)
    summary = record_activations(datasets, args.policy_path, args.output_dir, args.episodes, record_config(args))
    print(json.dumps(summary, indent=2))
    return 0
