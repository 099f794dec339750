"""``pai push``: publish an SAE folder to the Hugging Face Hub as one unit, typically after calibrate-ood."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import args as flags

log = logging.getLogger(__name__)


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "push",
        help="upload an SAE folder with its OOD files and labels to the hub",
        description="Upload the SAE at --sae-path as one unit: model.safetensors, config.json, "
        "metrics.json, README.md, labels.json, ood_params.json with its plot and every "
        "reference file it names. The repo's other files are deleted in the same commit, "
        "so OOD files of earlier weights never stay behind. Loading the repo id "
        "(--sae-path ID) then finds every part.",
    )
    flags.add_sae_path(p, help="SAE folder (pai train-sae, then pai calibrate-ood)")
    flags.add_hub_repo(p, required=True, old=("--repo-id", "--private"))
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..hub import OOD_PARAMS, sae_unit, upload_sae

    folder = Path(args.sae_path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--sae-path {folder}: no such SAE folder")
    files = sae_unit(folder)
    if OOD_PARAMS not in files:
        log.warning(
            "%s has no %s: the hub SAE will run without an OOD alarm (run pai calibrate-ood first)", folder, OOD_PARAMS
        )
    result: dict = {"sae_path": str(folder), "repo_id": args.hub_repo_id, "files": files}
    if not args.dry_run:
        result["uploaded"] = upload_sae(
            folder, args.hub_repo_id, private=args.hub_private, commit_message="Upload SAE with pai push"
        )
    print(json.dumps(result, indent=2))
    return 0
