"""``pai demo``: the whole of pai on the SO-101 simulation, from expert data to live OOD alarms."""

from __future__ import annotations

import argparse

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run pai end to end on the SO-101 simulation (what `make demo` runs)",
        description="Record simulated expert data (clean and perturbed), train an ACT, record its "
        "activations, train the SAE, calibrate the OOD detector, replay a clean and a "
        "perturbed episode offline and through the ROS node, and write a report. "
        "Stages whose outputs exist are skipped.",
    )
    p.add_argument("--output-dir", default="outputs/demo", help="where everything goes (default outputs/demo)")
    p.add_argument("--quick", action="store_true", help="small version: few episodes, short training (minutes)")
    p.add_argument("--force", default="", help="comma-separated stage names to rerun even if their outputs exist")
    p.add_argument("--only", default="", help="comma-separated stage names to run (others must exist)")
    p.add_argument(
        "--train-policy",
        action="store_true",
        help="train the policy here instead of using the shipped demo policy (pai_core/sim/demo_policy/README.md)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="policy training steps with --train-policy (default 3000; 60 with --quick)",
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="optional clock bound on policy training (minutes; default none: bounded by steps)",
    )
    p.add_argument("--no-ros", action="store_true", help="skip the replay through the ROS node")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..sim.demo import DemoConfig, run_demo

    cfg = DemoConfig.preset(args.output_dir, quick=args.quick)
    training_flags = args.train_steps is not None or args.train_minutes is not None
    if args.train_policy:
        cfg.policy = "train"
    elif training_flags and cfg.policy == "shipped":
        raise UsageError("--train-steps and --train-minutes need --train-policy (default: the shipped policy)")
    if args.train_minutes is not None:
        cfg.train_minutes = args.train_minutes
    if args.train_steps is not None:
        cfg.train_steps = args.train_steps
    cfg.ros = not args.no_ros
    report = run_demo(cfg, force=[s for s in args.force.split(",") if s], only=[s for s in args.only.split(",") if s])
    print(report)
    return 0
