"""Loading a LeRobot policy and its processors from a ``pretrained_model`` directory or a hub id."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError


def import_lerobot_policies() -> None:
    """Import LeRobot's policy modules. transformers 5.x breaks LeRobot 0.4.4's groot import chain; ACT
    does not need transformers, so hide it when it is the broken version (see ENVIRONMENT.md)."""
    if "transformers" not in sys.modules:
        try:
            import transformers  # noqa: F401

            if int(transformers.__version__.split(".")[0]) >= 5:
                sys.modules["transformers"] = None  # type: ignore[assignment]
        except ImportError:
            pass


@dataclass
class LoadedPolicy:
    """A LeRobot policy in eval mode with its pre- and post-processor pipelines."""

    policy: Any
    preprocessor: Any
    postprocessor: Any
    source: str


def policy_fingerprint(policy) -> str:
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


def load_policy(path_or_repo_id: str | os.PathLike, device: str = "cpu") -> LoadedPolicy:
    """Load policy, preprocessor and postprocessor, placed on ``device`` ("cpu", "cuda", "cuda:1").

    A local directory is read as it is; anything else is a Hugging Face Hub id (downloaded by
    ``huggingface_hub`` through LeRobot's ``from_pretrained``).
    """
    import_lerobot_policies()
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    source = str(path_or_repo_id)
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"Policy directory {path} has no config.json; expected a LeRobot pretrained_model folder")
    if not path.exists() and looks_like_path(source):
        raise ModelError(f"Policy directory {source}: no such directory (relative paths are relative to the working "
                         f"directory, {Path.cwd()}); a hub id has the form 'user/name'")
    ref = str(path) if path.exists() else source
    try:
        cfg = PreTrainedConfig.from_pretrained(ref)
        cfg.device = device
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
        raise ModelError(f"Could not load policy from {source}: {exc}") from exc
    policy.to(device).eval()
    return LoadedPolicy(policy, pre, post, source)
