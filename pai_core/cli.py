"""The ``pai`` command. Each subcommand lives in ``pai_core.commands.<name>`` with ``register`` and ``run``;
heavy imports happen inside ``run`` so ``pai --help`` answers at once. Flags shared by several commands are
defined once in ``pai_core.commands.args`` (one spelling per concept, old spellings as deprecated aliases).

Output: progress and status go to ``logging`` (stderr, ``[pai] ...``; ``-v`` for debug, ``-q`` for warnings
only); results (the paths written, the numbers a user reads, JSON summaries) go to stdout, so
``pai ... > result.json`` or a pipe sees only the result."""

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
  pai push --sae-path SAE --hub-repo-id USER/NAME  the calibrated SAE to the hub, as one unit
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
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    level.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only (results still print)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"pai_core.commands.{name}")
        sp = module.register(sub)
        sp.set_defaults(_run=module.run)
    return parser


_handler: logging.Handler | None = None


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Progress and status to stderr as ``[pai] message``; results are printed to stdout by the commands.
    Logging a host (or pytest) set up already is left as it is."""
    global _handler
    root = logging.getLogger()
    if _handler is None and not root.handlers:
        logging.basicConfig(format="[pai] %(message)s")  # stderr
        _handler = root.handlers[0]
    if _handler is not None and _handler in root.handlers:
        root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    configure_logging()  # before parsing: a deprecated flag's warning is logged while it is parsed
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
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
