"""The ``pai`` command. Each subcommand lives in ``pai_core.commands.<name>`` with ``register`` and ``run``;
heavy imports happen inside ``run`` so ``pai --help`` answers at once."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import PaiError

# Subcommand modules, in the order ``pai --help`` lists them.
COMMANDS = [
    "info",
    "record_activations",
    "train_sae",
    "calibrate_ood",
    "evaluate_ood",
    "push",
    "replay",
    "check_inputs",
    "record_features",
    "analyse_features",
    "label_features",
    "sim",
    "demo",
]

DESCRIPTION = """\
pai: see what a LeRobot ACT policy looks at and thinks, and stop the robot when it sees something new.

typical workflow:
  pai demo [--quick]                          SO-101 simulation -> trained ACT -> SAE -> live OOD alarms
  pai sim record|train-policy|evaluate-policy  simulated expert data, a small ACT, its success rate
  pai info --policy-path DIR                  token layout, cameras and state of a policy
  pai train-sae --dataset-repo-id ID --policy-path DIR --output-dir SAE   record tokens, train the SAE
  pai calibrate-ood --sae-path SAE --policy-path DIR --dataset-repo-id ID  conformal OOD threshold
  pai evaluate-ood --sae-path SAE --policy-path DIR --id DS --ood DS      AUROC, false alarms, delay
  pai push --sae-path SAE --repo-id USER/NAME   the calibrated SAE to the hub, as one unit
  pai replay --bag REC --config config/introspect.yaml --output-dir OUT   videos, Parquet, MCAP, report
  pai check-inputs --bag REC --policy-path DIR [--config YAML]  joint states vs the policy's units
  pai record-features --dataset-repo-id ID --policy-path DIR --sae-path SAE --output-dir REC   activations
  pai analyse-features --record-dir REC --output-dir ANA  rank features: top frames, maps, clips, index.html
  pai label-features --analysis-dir ANA --sae-path SAE   name features in a Gradio app (labels.json)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pai", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"pai_core.commands.{name}")
        sp = module.register(sub)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="[pai] %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PaiError as exc:
        print(f"pai {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
