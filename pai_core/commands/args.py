"""The arguments several ``pai`` commands share, each defined once, so a concept has one spelling everywhere:

========================  ==========================================================================
``--output-dir DIR``      the folder a command writes (never ``--output``)
``--episodes 0,2,5-7``    episode selection; ranges, commas and spaces (``--episodes 0 2 5-7``) alike
``--dataset-repo-id ID``  a LeRobot dataset's repo id, with ``--root DIR``: that one dataset's local folder
``--policy-path P``       a LeRobot ``pretrained_model`` folder or hub id
``--sae-path S``          an SAE folder or hub id
``--ood-params-path F``   an ``ood_params.json`` (read, or written by ``calibrate-ood``)
``--hub-repo-id ID``      the hub repo a command publishes to (with ``--hub-private``)
``--model-dtype``,        how the policy is built: its dtype and config fields set before it is built
``--policy-overrides``
========================  ==========================================================================

The spellings these replace stay for one release as deprecated aliases (``alias``): they still work, are
hidden from ``--help`` and log one warning naming the new flag. Only argparse and logging are imported here, so
``pai --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ..activations import RecordConfig

log = logging.getLogger("pai")

#: the policy dtypes (``pai_core.policy.MODEL_DTYPES``, spelt out so this module imports nothing heavy).
MODEL_DTYPES = ("float32", "bfloat16", "float16")
Container = argparse._ActionsContainer  # a parser or an argument group (add_argument_group's return type)
Subparsers = argparse._SubParsersAction  # what each command's ``register(sub)`` adds its parser to


# ---------------------------------------------------------------------------------- deprecated aliases
class _DeprecatedSpelling(argparse.Action):
    """Mixin of an action with old option strings: using one of them logs a warning naming the new flag."""

    old_spellings: frozenset[str] = frozenset()

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string in self.old_spellings:
            new = self.option_strings[0]
            log.warning("%s is deprecated and will be removed in the next release; use %s", option_string, new)
        super().__call__(parser, namespace, values, option_string)  # the concrete action's (mixed in after)


_CLASSES: dict[type, type] = {}


def alias(action: argparse.Action, *old: str) -> argparse.Action:
    """Make ``action`` answer to the ``old`` option strings too (given to ``add_argument`` after the new one).
    They parse as before, are left out of ``--help`` and of error messages, and warn when used."""
    missing = [o for o in old if o not in action.option_strings]
    if missing:
        raise ValueError(f"alias {missing} must be option strings of the argument {action.option_strings}")
    base = type(action)
    if not issubclass(base, _DeprecatedSpelling):
        if base not in _CLASSES:
            _CLASSES[base] = type(f"Deprecated{base.__name__}", (_DeprecatedSpelling, base), {})
        action.__class__ = _CLASSES[base]
    cast(_DeprecatedSpelling, action).old_spellings = frozenset(old)  # its class was just swapped for one
    # the parser keeps every spelling in its lookup table; help and errors name only the current one
    action.option_strings = [o for o in action.option_strings if o not in old]
    return action


def add(p: Container, flag: str, *, old: Sequence[str] = (), **kwargs: Any) -> argparse.Action:
    """``p.add_argument(flag, **kwargs)`` that also accepts the deprecated spellings ``old``."""
    return alias(p.add_argument(flag, *old, **kwargs), *old)


# ------------------------------------------------------------------------------------ index selection
def parse_indices(text: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]`` (one command-line value; several values are joined by the action).
    A bad value is an error that names it."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            first = last = -1
        if first < 0 or last < first:
            where = "" if part == text.strip() else f" (in {text!r})"
            raise argparse.ArgumentTypeError(
                f"{part!r}{where} is not an index or a range: expected indices like 0,2,5-7 "
                "(non-negative; a range LO-HI with LO <= HI)"
            )
        out += range(first, last + 1)
    return out


class _Indices(argparse.Action):
    """Joins the values of ``nargs="*"`` (``0 2 5-7``, ``0,2,5-7`` or both) into one list; none given: None
    (the default, usually "all")."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        flat = [i for value in values or [] for i in value]
        setattr(namespace, self.dest, flat or None)


def add_indices(p: Container, flag: str, help: str, *, old: Sequence[str] = (), metavar: str = "N") -> None:
    """An index selection (episodes, features): ``FLAG 0,2,5-7`` or ``FLAG 0 2 5-7``; default None."""
    add(p, flag, old=old, type=parse_indices, nargs="*", action=_Indices, default=None, metavar=metavar, help=help)


def add_episodes(p: Container, help: str = "episodes, e.g. 0,2,5-7 or 0 2 5 (default: all)", **kwargs: Any) -> None:
    add_indices(p, "--episodes", help, **kwargs)


# ------------------------------------------------------------------------------------------ folders
def add_output_dir(p: Container, help: str, *, required: bool = True, old: Sequence[str] = (), **kwargs: Any) -> None:
    add(p, "--output-dir", old=old, required=required, metavar="DIR", help=help, **kwargs)


def add_dataset(p: Container, *, required: bool = True, repo_help: str = "", root_help: str = "") -> None:
    """``--dataset-repo-id`` and ``--root`` (the local folder of that dataset; never a folder of datasets)."""
    p.add_argument(
        "--dataset-repo-id",
        required=required,
        metavar="ID",
        help=repo_help or "LeRobot dataset repo id (local under --root, else the hub / HF cache)",
    )
    p.add_argument(
        "--root", default=None, metavar="DIR", help=root_help or "local folder of the dataset (default: the hub cache)"
    )


def add_policy_path(p: Container, *, required: bool = True, help: str = "", **kwargs: Any) -> None:
    p.add_argument(
        "--policy-path",
        required=required,
        metavar="PATH",
        help=help or "LeRobot pretrained_model folder or hub id",
        **kwargs,
    )


def add_sae_path(p: Container, *, required: bool = True, help: str = "", **kwargs: Any) -> None:
    p.add_argument(
        "--sae-path", required=required, metavar="PATH", help=help or "SAE folder (pai train-sae) or hub id", **kwargs
    )


def add_ood_params_path(p: Container, help: str = "", *, old: Sequence[str] = (), **kwargs: Any) -> None:
    add(
        p,
        "--ood-params-path",
        old=old,
        metavar="FILE",
        help=help or "ood_params.json (default: the one beside the SAE)",
        **kwargs,
    )


def add_device(p: Container, default: str | None = "cpu", help: str = "") -> None:
    p.add_argument("--device", default=default, help=help or "torch device (cpu, cuda, cuda:N)")


def add_hub_repo(
    p: Container, *, required: bool = False, help: str = "", private_help: str = "", old: Sequence[str] = ()
) -> None:
    """``--hub-repo-id`` and ``--hub-private``; ``old`` pairs up with them: (old repo flag, old private flag)."""
    add(
        p,
        "--hub-repo-id",
        old=old[:1],
        required=required,
        metavar="ID",
        help=help or "hub model repo to create or update (user/name)",
    )
    add(p, "--hub-private", old=old[1:], action="store_true", help=private_help or "make a new hub repo private")


# ------------------------------------------------------------------------------------ policy building
def add_model_args(p: Container) -> None:
    """``--model-dtype`` and ``--policy-overrides``: how the policy is built (``IntrospectionConfig``)."""
    p.add_argument(
        "--model-dtype",
        choices=MODEL_DTYPES,
        default=None,
        help="run the policy in this dtype (default float32, as saved); actions stay float32",
    )
    p.add_argument(
        "--policy-overrides",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="policy config fields set before the policy is built (JSON values), e.g. "
        "temporal_ensemble_coeff=0.01 n_action_steps=1 (temporal ensembling needs 1 step)",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``IntrospectionConfig`` keywords of ``--model-dtype`` and ``--policy-overrides`` (float32, none when
    absent); a malformed override is an ``InputError`` naming it."""
    from ..policy import parse_overrides

    return {
        "model_dtype": args.model_dtype or "float32",
        "policy_overrides": parse_overrides(args.policy_overrides or []),
    }


# record-activations' flags, shared with train-sae (which records first) and its torchrun form
def add_recording_dataset(p: argparse._ActionsContainer, required: bool = True) -> None:
    add_dataset(
        p,
        required=required,
        repo_help="LeRobot dataset repo id (hub id or local name); several: a,b (or the seed's [a,b]), "
        "recorded together as one set of frames",
        root_help="local copy of the dataset (default: the hub / HF cache); several datasets: r1,r2 in the "
        "order of --dataset-repo-id",
    )
    add_episodes(p, help="episodes of a single dataset, e.g. 0,2,5-7 (default: all; several datasets: always all)")


def add_record_args(p: argparse._ActionsContainer) -> None:
    p.add_argument("--frames-per-batch", type=int, default=16, help="frames per engine forward")
    p.add_argument("--shard-frames", type=int, default=256, help="frames per shard (bounds memory)")
    p.add_argument("--layer", type=int, default=-1, help="encoder layer whose tokens are recorded (-1: the last)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="storage type")
    p.add_argument(
        "--token-sampling",
        choices=["all", "blocks"],
        default="all",
        help="'blocks' keeps latent+state tokens and averages camera tokens in blocks (the seed's way)",
    )
    p.add_argument("--block", type=int, default=2, help="block edge in tokens for --token-sampling blocks")
    add_model_args(p)


def record_config(ns: argparse.Namespace) -> RecordConfig:
    from ..activations import RecordConfig
    from ..errors import ConfigError

    try:
        return RecordConfig(
            batch_size=ns.frames_per_batch,
            shard_frames=ns.shard_frames,
            layer=ns.layer,
            dtype=ns.dtype,
            sampling=ns.token_sampling,
            block=ns.block,
            device=ns.device,
            **model_options(ns),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
