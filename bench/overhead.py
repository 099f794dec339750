#!/usr/bin/env python
"""Engine and seed-mapper overhead against plain LeRobot inference, measured side by side in one process.

Two 480x640 cameras, dim_model 512 (ACT defaults), random init. Each side has its own freshly loaded copy of
the same policy; every round runs each side once in a rotated order (bench/timing.py); medians of N rounds:
  plain   : policy.model(batch) on a preprocessed batch (the bare forward), LeRobot's own load, no hooks
  lerobot : preprocessor + policy.predict_action_chunk + postprocessor from uint8 images (same hook-free policy)
  seed    : the seed's ACTPolicyWithAttention.select_action + postprocessor + visualize_attention from uint8
            images (physical-ai-interpretability 0.1.4, bench/seed.py; its own policy copy)
  engine  : Introspector.step_batch (actions, maps, rollout, tokens) + render_overlays, from uint8 images
Prints the ratios against plain (target engine/plain <= 1.05) and engine/seed. Before timing, the sides'
actions are checked equal (same weights, same inputs), and the plain policy is checked hook-free before and
after the rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plain import assert_no_hooks, load_plain, registered_hooks  # noqa: E402
from bench.timing import interleave  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds (each side once per round)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim-model", type=int, default=512)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument(
        "--without-seed",
        action="store_true",
        help="skip the seed's mapper (when physical-ai-interpretability is absent)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.seed import SeedMissing, attention_mapper, package_dir
    from pai_core import FrameResult, IntrospectionConfig, Introspector, Observation, render_overlays
    from pai_core.testing import make_act_policy

    seed_mapper = None
    if not args.without_seed:
        try:
            package_dir()  # fail before any model is built, with the install line
        except SeedMissing as exc:
            sys.exit(f"bench/overhead.py: {exc}\n(or run with --without-seed to measure without the seed)")

    cams = {
        "observation.images.front": (args.height, args.width),
        "observation.images.wrist": (args.height, args.width),
    }
    path = str(
        make_act_policy(
            tempfile.mkdtemp() + "/p",
            cameras=cams,
            dim_model=args.dim_model,
            n_heads=8,
            dim_feedforward=3200,
            n_encoder_layers=4,
            chunk_size=100,
            n_action_steps=100,
        )
    )
    plain_p = load_plain(path, args.device)
    engine = Introspector.from_pretrained(path, IntrospectionConfig(device=args.device))
    if not args.without_seed:
        seed_p = load_plain(path, args.device)
        seed_mapper = attention_mapper(seed_p.policy, seed_p.preprocessor)

    rng = np.random.default_rng(0)
    obs = Observation(
        images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in cams.items()},
        state=rng.normal(size=6).astype(np.float32),
    )
    policy, pre, post = plain_p.policy, plain_p.preprocessor, plain_p.postprocessor
    batch = pre(plain_p.to_lerobot(obs.images, obs.state))
    model_batch = dict(batch)
    model_batch["observation.images"] = [batch[k] for k in policy.config.image_features]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain() -> object:
        with torch.inference_mode():
            return policy.model(model_batch)

    def lerobot() -> torch.Tensor:
        with torch.inference_mode():
            return post(policy.predict_action_chunk(pre(plain_p.to_lerobot(obs.images, obs.state))))

    def seed() -> torch.Tensor:
        assert seed_mapper is not None
        action, _maps = seed_mapper.select_action(seed_p.to_lerobot(obs.images, obs.state))
        seed_mapper.visualize_attention()
        return seed_p.postprocessor(action)

    def ours() -> FrameResult:
        res = engine.step_batch([obs])[0]
        render_overlays(obs, res)
        return res

    # Same weights, same inputs: the sides compute the same actions (the comparison is like for like).
    chunk = lerobot()[0].cpu().numpy()
    np.testing.assert_allclose(ours().action_chunk, chunk, rtol=1e-4, atol=1e-4)
    sides = {"plain": plain, "lerobot": lerobot, "engine": ours}
    if seed_mapper is not None:
        np.testing.assert_allclose(seed()[0].cpu().numpy(), chunk[0], rtol=1e-4, atol=1e-4)
        sides["seed"] = seed
    assert_no_hooks(policy, "the plain LeRobot policy")

    t = interleave(sides, rounds=args.runs, warmup=args.warmup, sync=sync)

    assert_no_hooks(policy, "the plain LeRobot policy (after the rounds)")
    if seed_mapper is not None:
        assert_no_hooks(seed_p.policy, "the seed's policy between calls (its hook is removed after each)")
    print(
        f"device={args.device} threads={args.threads} dim_model={args.dim_model} "
        f"cameras=2x{args.height}x{args.width} rounds={t.rounds} (interleaved, rotated order) warmup={args.warmup}"
    )
    print(
        f"plain policy hooks: {registered_hooks(policy) or 'none'}; "
        f"engine policy hooks: {len(registered_hooks(engine.policy))}"
    )
    print(t.table())
    print(t.ratio_line("engine", "plain", "(target <= 1.05)"))
    print(t.ratio_line("lerobot", "plain"))
    print(t.ratio_line("engine", "lerobot"))
    if seed_mapper is not None:
        print(t.ratio_line("seed", "plain", "(the seed's mapper, measured live)"))
        print(t.ratio_line("engine", "seed"))


if __name__ == "__main__":
    main()
