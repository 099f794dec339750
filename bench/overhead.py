#!/usr/bin/env python
"""Engine overhead against plain LeRobot inference, measured side by side in one process.

Two 480x640 cameras, dim_model 512 (ACT defaults), random init. Interleaved runs, median of N:
  plain   : policy.model(batch) on a preprocessed batch (the bare forward)
  lerobot : preprocessor + policy.predict_action_chunk + postprocessor from uint8 images
  engine  : Introspector.step_batch (actions, maps, rollout, tokens) + render_overlays, from uint8 images
Prints the ratios; target engine/plain <= 1.05 (the seed's mapper: 1.64).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim-model", type=int, default=512)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pai_core import IntrospectionConfig, Introspector, Observation, render_overlays
    from pai_core.testing import make_act_policy

    cams = {
        "observation.images.front": (args.height, args.width),
        "observation.images.wrist": (args.height, args.width),
    }
    path = make_act_policy(
        tempfile.mkdtemp() + "/p",
        cameras=cams,
        dim_model=args.dim_model,
        n_heads=8,
        dim_feedforward=3200,
        n_encoder_layers=4,
        chunk_size=100,
        n_action_steps=100,
    )
    engine = Introspector.from_pretrained(str(path), IntrospectionConfig(device=args.device))
    policy, pre, post = engine.policy, engine.loaded.preprocessor, engine.loaded.postprocessor
    rng = np.random.default_rng(0)
    obs = Observation(
        images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in cams.items()},
        state=rng.normal(size=6).astype(np.float32),
    )
    batch = pre(engine.observation_to_dict(obs))
    model_batch = dict(batch)
    model_batch["observation.images"] = [batch[k] for k in engine.camera_names]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain():
        with torch.inference_mode():
            policy.model(model_batch)

    def lerobot():
        with torch.inference_mode():
            post(policy.predict_action_chunk(pre(engine.observation_to_dict(obs))))

    def ours():
        res = engine.step_batch([obs])[0]
        render_overlays(obs, res)

    fns = {"plain": plain, "lerobot": lerobot, "engine": ours}
    # The plain forward runs without our hooks: remove them for its runs, re-add for the engine's.
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(3):
        for fn in fns.values():
            fn()
    for _ in range(args.runs):
        for name, fn in fns.items():
            if name == "engine":
                engine.adapter = type(engine.adapter)(policy, engine.config.token_layer)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1000)
            if name == "engine":
                engine.adapter.remove_hooks()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"device={args.device} threads={args.threads} dim_model={args.dim_model} "
        f"cameras=2x{args.height}x{args.width} runs={args.runs}"
    )
    for k, v in med.items():
        print(f"  {k:8s} median {v:8.1f} ms   p90 {np.percentile(times[k], 90):8.1f} ms")
    print(f"ratio engine/plain   = {med['engine'] / med['plain']:.3f}  (target <= 1.05; seed mapper 1.64)")
    print(f"ratio engine/lerobot = {med['engine'] / med['lerobot']:.3f}")


if __name__ == "__main__":
    main()
