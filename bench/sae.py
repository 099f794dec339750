#!/usr/bin/env python
"""SAE training throughput and quality on recorded ACT encoder tokens.

Records tokens of a random-init ACT (default dim_model 512, 4 encoder layers, one 240x320 camera: 82
tokens per frame) over a synthetic LeRobot dataset, then trains a TopK SAE (expansion 16, k = 32, so
L0 = 32) and prints training tokens/s and held-out FVU, mean L0 and dead fraction. Random-init policy
tokens are not a trained policy's tokens: the FVU is a pipeline check, throughput is what transfers.

    python bench/sae.py                       # CPU (30 steps of 1024 tokens: minutes)
    python bench/sae.py --device cuda --steps 2000
    python bench/sae.py --activations DIR     # reuse a recording (pai record-activations)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim-model", type=int, default=512)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--activations", default=None, help="existing recording to train on")
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: 30 on CPU, 2000 on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="tokens per step; default 1024 CPU, 4096 CUDA")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    on_cpu = not args.device.startswith("cuda")
    args.steps = args.steps or (30 if on_cpu else 2000)
    args.batch_size = args.batch_size or (1024 if on_cpu else 4096)

    from pai_core.activations import ActivationStore, RecordConfig, record_activations, token_batches
    from pai_core.sae import TrainConfig, train_sae

    work = Path(tempfile.mkdtemp(prefix="pai-bench-sae-"))
    if args.activations:
        acts = Path(args.activations)
    else:
        from pai_core.testing import make_act_policy, make_lerobot_dataset

        cams = {"observation.images.front": (args.height, args.width)}
        ds = make_lerobot_dataset(work / "ds", cameras=cams, episodes=args.episodes, frames=args.frames)
        policy = make_act_policy(
            work / "policy", cameras=cams, dim_model=args.dim_model, n_heads=8, dim_feedforward=3200, n_encoder_layers=4
        )
        acts = work / "acts"
        t0 = time.perf_counter()
        record_activations(
            ds, str(policy), acts, config=RecordConfig(batch_size=16, shard_frames=50, device=args.device)
        )
        frames = args.episodes * args.frames
        print(f"recording: {frames / (time.perf_counter() - t0):.1f} frames/s on {args.device}")
    store = ActivationStore(acts)
    train, held = store.split(0.25)
    print(
        f"tokens: {store.count_tokens(train)} train, {store.count_tokens(held)} held out, d_model {store.d_model}, "
        f"{store.manifest['tokens_per_frame']} per frame"
    )
    cfg = TrainConfig(
        expansion_factor=args.expansion_factor,
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        dead_tokens=max(10 * args.batch_size, 100_000),
        checkpoint_every=0,
        device=args.device,
    )
    result = train_sae(
        token_batches(train, args.batch_size, repeat=True, device=args.device),
        store.d_model,
        work / "sae",
        cfg,
        held_out=lambda: token_batches(held, 8192, shuffle=False, device=args.device),
    )
    held_metrics = result.metrics["held_out"]
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{args.threads} threads",
        "d_model": store.d_model,
        "n_latents": store.d_model * args.expansion_factor,
        "k": args.k,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "train_tokens_per_s": round(result.metrics["tokens_per_s"]),
        "held_out_fvu": round(held_metrics["fvu"], 4),
        "held_out_mean_l0": held_metrics["mean_l0"],
        "held_out_dead_fraction": round(held_metrics["dead_fraction"], 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
