"""``pai train-sae``: train a TopK SAE on recorded tokens (or record them first)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from . import args as flags

if TYPE_CHECKING:
    from ..activations import ActivationStore
    from ..sae.train import TrainConfig

log = logging.getLogger(__name__)


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train-sae",
        help="train a sparse autoencoder on a policy's encoder tokens",
        description="Train a per-token TopK SAE from `pai record-activations` output (--activations) "
        "or record from a dataset first (--dataset-repo-id/--root/--policy-path, into "
        "OUTPUT_DIR/activations). Writes model.safetensors, config.json, metrics.json "
        "(held-out FVU, L0, dead fraction), README.md and checkpoint.pt.",
    )
    src = p.add_argument_group("tokens")
    src.add_argument("--activations", default=None, help="directory written by `pai record-activations`")
    flags.add_recording_dataset(src, required=False)
    flags.add_policy_path(src, required=False, help="policy to record with (when --dataset-repo-id is given)")
    flags.add_record_args(src)
    t = p.add_argument_group("training")
    flags.add_output_dir(t, "SAE folder to write")
    t.add_argument("--expansion-factor", type=int, default=16, help="latents = expansion factor x dim_model")
    t.add_argument("--k", type=int, default=32, help="active latents per token (TopK)")
    t.add_argument("--aux-k", type=int, default=256, help="dead latents used by the AuxK loss")
    t.add_argument(
        "--dead-tokens",
        type=int,
        default=None,
        help="tokens without firing after which a latent is dead (default: scaled with the run)",
    )
    t.add_argument(
        "--min-usage",
        type=float,
        default=0.5,
        help="usage floor as a fraction of the uniform rate k/latents: a latent chosen for fewer of a batch's "
        "tokens gets a selection bias until it is chosen again (0: off, TopK + AuxK alone)",
    )
    t.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of episodes held out for the metrics")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    t.add_argument("--pooling", choices=["max", "mean"], default="max", help="per-frame pooling of token features")
    t.add_argument("--seed", type=int, default=0)
    flags.add_device(t)
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    h = p.add_argument_group("hub")
    h.add_argument(
        "--upload-to-hub",
        action="store_true",
        help="upload the SAE now, without OOD parameters (calibrate first, then publish with `pai push` "
        "or `pai calibrate-ood --upload-to-hub` for a hub SAE with its alarm)",
    )
    flags.add_hub_repo(h, help="hub model repo (required with --upload-to-hub)")
    return p


def train_config(args: argparse.Namespace, store: ActivationStore) -> TrainConfig:
    """The flags as a ``TrainConfig`` for ``store``'s layer, checked against its width before any work
    (one place for ``pai train-sae`` and its torchrun form in ``distributed``)."""
    from ..errors import ConfigError
    from ..sae.train import TrainConfig

    try:
        cfg = TrainConfig(
            expansion_factor=args.expansion_factor,
            k=args.k,
            aux_k=args.aux_k,
            dead_tokens=args.dead_tokens,
            min_usage=args.min_usage,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            checkpoint_every=args.checkpoint_every,
            layer=int(store.manifest["layer"]),
            pooling=args.pooling,
            seed=args.seed,
            device=args.device,
        )
        cfg.sae_config(store.d_model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..activations import ActivationStore, record_activations
    from ..distributed import train_on_recording
    from ..errors import UsageError

    if args.upload_to_hub and not args.hub_repo_id:
        raise UsageError("--upload-to-hub needs --hub-repo-id (the hub model repo to create or update)")
    if bool(args.activations) == bool(args.dataset_repo_id):
        raise UsageError("give either --activations DIR or --dataset-repo-id (with --policy-path) to record first")
    out = Path(args.output_dir)
    if args.dataset_repo_id:
        if not args.policy_path:
            raise UsageError("--dataset-repo-id needs --policy-path: the policy whose tokens are recorded")
        from ..activations import open_datasets  # one dataset, or several: a,b (--root r1,r2)

        acts = out / "activations"
        record_activations(
            open_datasets(args.dataset_repo_id, args.root),
            args.policy_path,
            acts,
            args.episodes,
            flags.record_config(args),
        )
    else:
        acts = Path(args.activations)
    cfg = train_config(args, ActivationStore(acts))
    result = train_on_recording(acts, out, cfg, val_fraction=args.val_fraction, resume=args.resume)
    assert result is not None  # one process is rank 0
    print(
        json.dumps(
            {
                "output_dir": str(out),
                **result.metrics.get("held_out", {}),
                "tokens_per_s": result.metrics["tokens_per_s"],
            },
            indent=2,
        )
    )
    if args.upload_to_hub:
        from ..hub import upload_sae

        log.warning(
            "uploading %s before calibration: the hub repo gets no OOD parameters, so an SAE loaded from it "
            "runs without an alarm. Run `pai calibrate-ood --sae-path %s ...`, then `pai push --sae-path %s "
            "--hub-repo-id %s`",
            out,
            out,
            out,
            args.hub_repo_id,
        )
        print(f"uploaded to {upload_sae(out, args.hub_repo_id, private=args.hub_private)} (no OOD parameters yet)")
    return 0
