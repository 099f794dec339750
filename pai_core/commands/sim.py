"""``pai sim``: the SO-101 pick-cube simulation: record expert episodes, train an ACT, evaluate it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from . import args as flags

if TYPE_CHECKING:
    from ..sim.env import SimConfig

REPO_ID = "pai/so101_pick_cube"


def _sim_args(p: argparse.ArgumentParser, perturbation: bool = True) -> None:
    from ..sim.scene import PERTURBATIONS

    p.add_argument("--height", type=int, default=96, help="camera image height (default 96)")
    p.add_argument("--width", type=int, default=128, help="camera image width (default 128)")
    p.add_argument("--max-steps", type=int, default=90, help="steps before an episode counts as failed")
    if perturbation:
        p.add_argument(
            "--perturbation",
            default="none",
            choices=list(PERTURBATIONS),
            help="scene variant: " + "; ".join(f"{k}: {v}" for k, v in PERTURBATIONS.items()),
        )


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sim",
        help="SO-101 simulation: record expert data, train and evaluate an ACT",
        description="Scripted-expert recordings, a small ACT trained on the CPU, and its "
        "closed-loop success rate, in the SO-101 pick-cube MuJoCo simulation.",
    )
    ssub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)

    r = ssub.add_parser(
        "record",
        help="record scripted-expert (or a policy's closed-loop) episodes as a LeRobot dataset (+ one rosbag2)",
    )
    flags.add_output_dir(r, "dataset folder to create (must not exist)", old=["--output"])
    flags.add(r, "--dataset-repo-id", old=["--repo-id"], default=REPO_ID, help="LeRobot repo id in the metadata")
    flags.add(r, "--num-episodes", old=["--episodes"], type=int, default=20, help="episodes to record (default 20)")
    r.add_argument("--seed", type=int, default=0, help="episode i places the cube with seed SEED+i")
    r.add_argument("--bag", default="", help="also write the first episode as a rosbag2 (MCAP) folder here")
    r.add_argument(
        "--keep-failed", action="store_true", help="keep episodes the expert failed (always kept in perturbed scenes)"
    )
    r.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        metavar="SCALE",
        help="DART noise injection: execute the expert's action plus Gaussian noise (scale drawn per episode "
        "from [0, SCALE] action units) while approaching the cube, record the clean action (default 0: none)",
    )
    flags.add_policy_path(
        r,
        required=False,
        default="",
        help="record this LeRobot policy driving the robot (its own actions) instead of the expert: the frames "
        "to calibrate its alarm on (`pai calibrate-ood --root`)",
    )
    _sim_args(r)

    t = ssub.add_parser("train-policy", help="train a small ACT on a recorded dataset (CPU, bounded time)")
    flags.add(t, "--root", old=["--dataset"], required=True, metavar="DIR", help="dataset folder from `pai sim record`")
    flags.add(t, "--dataset-repo-id", old=["--repo-id"], default=REPO_ID, help="LeRobot repo id of the dataset")
    flags.add_output_dir(t, "folder for pretrained_model/, training.json, training_loss.png", old=["--output"])
    t.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    t.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="optional wall-clock budget (default none: bounded by --steps, so a run is reproducible)",
    )
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--dim-model", type=int, default=128)
    t.add_argument("--chunk-size", type=int, default=20)
    t.add_argument("--n-action-steps", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--init-from",
        default=None,
        help="start from this pretrained_model folder (e.g. a checkpoint) instead of a new model",
    )
    t.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="also save checkpoints/<step>/pretrained_model every N steps (default 0: none)",
    )
    t.add_argument(
        "--frozen-batch-norm",
        action="store_true",
        help="keep LeRobot's frozen (identity) BatchNorm in the backbone instead of training it",
    )
    t.add_argument("--use-vae", action="store_true", help="train ACT's CVAE (off: the expert is deterministic)")
    t.add_argument(
        "--state-dropout",
        type=float,
        default=0.0,
        help="probability that a training sample's joint state is hidden, so the policy must use its camera",
    )
    t.add_argument(
        "--cube-position-loss",
        type=float,
        default=0.0,
        help="weight of a training-only loss that makes the decoder locate the cube (default 0: off)",
    )

    t.add_argument(
        "--start-share",
        type=float,
        default=0.0,
        help="share of every batch drawn from the episodes' first --start-frames frames, where only the camera "
        "tells where the cube is (default 0: frames drawn uniformly)",
    )
    t.add_argument("--start-frames", type=int, default=8, help="frames that --start-share draws from (default 8)")
    t.add_argument(
        "--action-loss",
        choices=["l1", "l2"],
        default="l1",
        help="loss on the action chunk (default l1, LeRobot's ACT; l2 needs no --use-vae)",
    )

    e = ssub.add_parser("evaluate-policy", help="closed-loop success rate of a policy in the simulator")
    flags.add_policy_path(e, help="LeRobot pretrained_model folder")
    flags.add(e, "--num-episodes", old=["--episodes"], type=int, default=10, help="episodes to run (default 10)")
    e.add_argument("--seed", type=int, default=10_000, help="first episode seed (held out from recordings)")
    flags.add_output_dir(e, "folder for evaluation.json and rollouts.mp4", required=False, old=["--output"], default="")
    _sim_args(e)
    return p


def _sim_config(args: argparse.Namespace) -> SimConfig:
    from ..sim.env import SimConfig

    try:
        return SimConfig(
            height=args.height,
            width=args.width,
            max_steps=args.max_steps,
            perturbation=getattr(args, "perturbation", "none"),
        )
    except ValueError as exc:
        from ..errors import ConfigError

        raise ConfigError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.sim_command == "record":
        from ..sim.record import RecordConfig, record

        summary = record(
            RecordConfig(
                Path(args.output_dir),
                args.dataset_repo_id,
                args.num_episodes,
                args.seed,
                keep_failed=True if args.keep_failed else None,
                bag_path=Path(args.bag) if args.bag else None,
                action_noise=args.action_noise,
                sim=_sim_config(args),
                policy_path=args.policy_path,
            )
        )
        print(
            f"recorded {len(summary['episodes'])} episodes ({summary['frames']} frames) in scene "
            f"{summary['perturbation']!r} to {summary['root']}; {summary['actor']} succeeded in "
            f"{summary['success_rate']:.0%}, {len(summary['skipped_failed'])} failed episodes skipped"
            + (f"; bag {summary['bag']} ({summary['bag_frames']} frames)" if summary["bag"] else "")
        )
        return 0
    if args.sim_command == "train-policy":
        from ..sim.train import TrainConfig, train_policy

        summary = train_policy(
            TrainConfig(
                args.root,
                args.output_dir,
                args.dataset_repo_id,
                args.steps,
                args.max_minutes,
                args.batch_size,
                args.lr,
                args.dim_model,
                chunk_size=args.chunk_size,
                n_action_steps=args.n_action_steps,
                seed=args.seed,
                save_every=args.save_every,
                init_from=args.init_from,
                batch_norm=not args.frozen_batch_norm,
                use_vae=args.use_vae,
                state_dropout=args.state_dropout,
                cube_position_loss=args.cube_position_loss,
                start_share=args.start_share,
                start_frames=args.start_frames,
                action_loss=args.action_loss,
            )
        )
        print(
            f"trained {summary['steps']} steps in {summary['seconds']} s (stopped by {summary['stopped_by']}), "
            f"final loss {summary['final_loss']:.4f}"
            + (
                f" (cube position {summary['final_cube_position_loss']:.4f})"
                if "final_cube_position_loss" in summary
                else ""
            )
            + f"; policy: {summary['policy_path']}"
        )
        return 0
    from ..sim.evaluate import EvalConfig, evaluate_policy

    summary = evaluate_policy(
        EvalConfig(args.policy_path, args.num_episodes, args.seed, args.output_dir, sim=_sim_config(args))
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    print(
        f"success rate {summary['success_rate']:.0%} ({summary['successes']} of {summary['episodes']} episodes); "
        f"camera effect {summary['camera_effect']:.3g} (mean change of the first action chunk with a black image)"
    )
    return 0
