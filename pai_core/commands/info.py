"""``pai info``: what a policy expects and how its tokens are laid out."""

from __future__ import annotations

import argparse
import json

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="show a policy's cameras, state, and token layout",
        description="Load a policy and print its inputs and the token layout of one forward pass.",
    )
    flags.add_policy_path(p)
    flags.add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine import IntrospectionConfig, Introspector
    from ..observation import Observation

    engine = Introspector.from_pretrained(args.policy_path, IntrospectionConfig(device=args.device))
    obs = Observation(
        images={k: np.zeros((h, w, 3), np.uint8) for k, (h, w) in engine.image_shapes.items()},
        state=np.zeros(engine.state_dim, np.float32) if engine.state_dim else None,
        env_state=np.zeros(engine.env_state_dim, np.float32) if engine.env_state_dim else None,
    )
    layout = engine.step_batch([obs])[0].layout
    cfg = engine.policy.config
    info = {
        "policy": args.policy_path,
        "type": cfg.type,
        "cameras": {k: list(v) for k, v in engine.image_shapes.items()},
        "state_dim": engine.state_dim,
        "action_dim": engine.action_dim,
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "temporal_ensemble_coeff": cfg.temporal_ensemble_coeff,
        "dim_model": cfg.dim_model,
        "tokens": layout.num_tokens,
        "camera_tokens": {c.name: [c.start, c.height, c.width] for c in layout.cameras},
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>24}: {value}")
    return 0
