"""``pai record-activations``: encoder tokens of LeRobot datasets' episodes into safetensors shards."""

from __future__ import annotations

import argparse
import json

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record-activations",
        help="record a policy's encoder tokens over dataset episodes",
        description="Run the engine over LeRobot dataset episodes (batched) and store encoder tokens "
        "in safetensors shards with episode/frame index. Re-running resumes: finished "
        "shards are skipped.",
    )
    flags.add_recording_dataset(p)
    flags.add_policy_path(p)
    flags.add_output_dir(p, "folder for the shards and activations.json")
    flags.add_device(p)
    flags.add_record_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..activations import open_datasets, record_activations

    datasets = open_datasets(args.dataset_repo_id, args.root)
    summary = record_activations(datasets, args.policy_path, args.output_dir, args.episodes, flags.record_config(args))
    print(json.dumps(summary, indent=2))
    return 0
