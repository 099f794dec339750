"""Loading a LeRobot policy and its processors from a ``pretrained_model`` directory or a hub id."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from .errors import ConfigError, ModelError, UsageError

if TYPE_CHECKING:
    import torch

ModelDtype = Literal["float32", "bfloat16", "float16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)


def import_lerobot_policies() -> None:
    """Import LeRobot's policy modules. transformers 5.x breaks LeRobot 0.4.4's groot import chain; ACT
    does not need transformers, so hide it when it is the broken version (see ENVIRONMENT.md)."""
    if "transformers" not in sys.modules:
        try:
            import transformers  # noqa: F401

            if int(transformers.__version__.split(".")[0]) >= 5:
                sys.modules["transformers"] = None  # type: ignore[assignment]  # None blocks the import (Python's idiom); typeshed allows only modules
        except ImportError:
            pass


@dataclass
class LoadedPolicy:
    """A LeRobot policy in eval mode with its pre- and post-processor pipelines."""

    policy: Any
    preprocessor: Any
    postprocessor: Any
    source: str
    fingerprint: str = ""  # ``policy_fingerprint`` of the weights as saved (before a cast to ``model_dtype``)


def policy_fingerprint(policy: torch.nn.Module) -> str:
    """A short hash of a policy's weights (64 evenly spaced values of every tensor, with names and shapes).
    SAE and OOD files record it, so files made for another policy of the same architecture are refused
    wherever the policy was saved or copied to."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        flat = tensor.detach().flatten()
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def looks_like_path(ref: str) -> bool:
    """A reference that can only be a local path: absolute, ``./``/``../``/``~``, or more than one ``/``
    (hub ids are ``user/name``)."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (the CLI's ``--policy-overrides``) -> ``{KEY: value}``. Values are read as JSON
    (``0.01``, ``1``, ``null``, ``true``, ``[1, 2]``); anything else is kept as a string (``relu``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--policy-overrides {item!r}: expected KEY=VALUE, e.g. temporal_ensemble_coeff=0.01")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


#: config fields an override may not set: they describe the saved weights or are set by other flags.
FIXED_FIELDS = ("input_features", "output_features", "normalization_mapping", "device", "pretrained_path", "type")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's type (ints for floats too; no bools for numbers)."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    return False


def apply_overrides(cfg: Any, overrides: Mapping[str, Any]) -> None:  # a LeRobot PreTrainedConfig
    """Set policy config fields before the policy is built (so e.g. a temporal ensembler exists), then run the
    config's own validation. An unknown key, a value of the wrong type or a combination the config refuses is
    an ``InputError`` naming the key."""
    if not overrides:
        return
    hints = typing.get_type_hints(type(cfg))
    names = sorted(f.name for f in dataclasses.fields(cfg) if f.name not in FIXED_FIELDS)
    for key, value in overrides.items():
        if key in FIXED_FIELDS:
            raise UsageError(
                f"--policy-overrides {key}: this field cannot be overridden (it describes the saved "
                f"policy{'; use --device' if key == 'device' else ''})"
            )
        if key not in hints:
            raise UsageError(
                f"--policy-overrides {key}: {type(cfg).__name__} has no field {key!r}; fields: {', '.join(names)}"
            )
        if not _fits(value, hints[key]):
            raise UsageError(
                f"--policy-overrides {key}={json.dumps(value)}: expected a value of type "
                f"{getattr(hints[key], '__name__', None) or hints[key]}"
            )
        old = getattr(cfg, key)
        setattr(cfg, key, tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value)
    try:
        cfg.__post_init__()
    except (ValueError, TypeError, NotImplementedError) as exc:
        given = " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
        raise UsageError(f"--policy-overrides {given}: {type(cfg).__name__} refuses it: {exc}") from exc


def check_model_dtype(model_dtype: str) -> None:
    if model_dtype not in MODEL_DTYPES:
        raise ConfigError(f"model dtype {model_dtype!r} is not one of {list(MODEL_DTYPES)}")


def cast_policy(loaded: LoadedPolicy, dtype: str) -> None:
    """Run ``loaded`` in ``dtype`` ("bfloat16", "float16"; "float64" for exact checks): weights cast, inputs cast
    by LeRobot's device step before they are normalised, actions cast back to float32 before they are
    unnormalised (so real units keep float32 precision). ACT builds its zero latent in float32 whatever the
    weights' dtype (``torch.zeros(..., dtype=float32)`` in ``ACT.forward``); a pre-hook casts it to the
    projection's dtype, so modeling_act.py stays untouched."""
    import torch
    from lerobot.processor import DeviceProcessorStep

    policy = loaded.policy
    policy.to(dtype=getattr(torch, dtype))
    proj = getattr(getattr(policy, "model", None), "encoder_latent_input_proj", None)
    if proj is not None and not getattr(proj, "_pai_cast_hook", False):
        proj.register_forward_pre_hook(lambda module, args: tuple(a.to(module.weight.dtype) for a in args))
        proj._pai_cast_hook = True
    device = str(next(policy.parameters()).device)
    for step in loaded.preprocessor.steps:
        if isinstance(step, DeviceProcessorStep):
            step.float_dtype = dtype
            step.__post_init__()
    steps = list(loaded.postprocessor.steps)
    if not (steps and getattr(steps[0], "_pai_float32", False)):
        first = DeviceProcessorStep(device=device, float_dtype="float32")
        first._pai_float32 = True
        loaded.postprocessor.steps = [first, *steps]


def load_policy(
    path_or_repo_id: str | os.PathLike,
    device: str = "cpu",
    model_dtype: ModelDtype = "float32",
    overrides: Mapping[str, Any] | None = None,
) -> LoadedPolicy:
    """Load policy, preprocessor and postprocessor, placed on ``device`` ("cpu", "cuda", "cuda:1").

    A local directory is read as it is; anything else is a Hugging Face Hub id (downloaded by
    ``huggingface_hub`` through LeRobot's ``from_pretrained``).

    Args:
        model_dtype: "float32" (as saved), "bfloat16" or "float16": the weights are cast and the preprocessor
            casts the inputs; actions come back in float32.
        overrides: policy config fields set before the policy is built (``apply_overrides``), e.g.
            ``{"temporal_ensemble_coeff": 0.01, "n_action_steps": 1}``.
    """
    import_lerobot_policies()
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    check_model_dtype(model_dtype)
    source = str(path_or_repo_id)
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"Policy directory {path} has no config.json; expected a LeRobot pretrained_model folder")
    if not path.exists() and looks_like_path(source):
        raise ModelError(
            f"Policy directory {source}: no such directory (relative paths are relative to the working "
            f"directory, {Path.cwd()}); a hub id has the form 'user/name'"
        )
    ref = str(path) if path.exists() else source
    try:
        cfg = PreTrainedConfig.from_pretrained(ref)
        cfg.device = device
    except Exception as exc:  # LeRobot raises a zoo of types; name the policy and keep the cause
        raise ModelError(f"Could not load policy from {source}: {exc}") from exc
    apply_overrides(cfg, overrides or {})
    try:
        with contextlib.redirect_stdout(sys.stderr):  # LeRobot prints "Loading weights ..."; stdout is for results
            policy = get_policy_class(cfg.type).from_pretrained(ref, config=cfg)
        pre, post = make_pre_post_processors(
            policy.config,
            pretrained_path=ref,
            preprocessor_overrides={"device_processor": {"device": device}},
        )
    except ModelError:
        raise
    except Exception as exc:  # LeRobot raises a zoo of types; name the policy and keep the cause
        given = f" with --policy-overrides {dict(overrides)}" if overrides else ""
        raise ModelError(f"Could not load policy from {source}{given}: {exc}") from exc
    loaded = LoadedPolicy(policy.to(device).eval(), pre, post, source, policy_fingerprint(policy))
    if model_dtype != "float32":
        cast_policy(loaded, model_dtype)
    return loaded
