"""The plain LeRobot baseline of the benchmarks: a policy loaded fresh through LeRobot's own API (no pai
code on its path), checked to carry no hooks, so "plain" never runs with the engine's hooks attached."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class PlainPolicy:
    """A LeRobot ``ACTPolicy`` with its processors, as a LeRobot user loads them."""

    policy: Any
    preprocessor: Any
    postprocessor: Any

    def to_lerobot(self, images: dict[str, np.ndarray], state: np.ndarray | None) -> dict[str, torch.Tensor]:
        """uint8 (H, W, 3) images and a state vector -> LeRobot's unbatched observation dict ((3, H, W) float in
        [0, 1]), the conversion a LeRobot control loop does before its preprocessor."""
        device = next(self.policy.parameters()).device
        out = {
            k: torch.from_numpy(img).to(device).permute(2, 0, 1).contiguous().float().div_(255.0)
            for k, img in images.items()
        }
        if state is not None:
            out["observation.state"] = torch.from_numpy(np.asarray(state, dtype=np.float32)).to(device)
        return out


def load_plain(path: str, device: str = "cpu") -> PlainPolicy:
    """``ACTPolicy.from_pretrained`` + ``make_pre_post_processors`` on ``device``; asserts no hooks."""
    from pai_core.policy import import_lerobot_policies

    import_lerobot_policies()  # only hides a broken transformers 5.x from LeRobot's imports; touches no model
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    with contextlib.redirect_stdout(sys.stderr):  # LeRobot prints "Loading weights ..."; stdout is for results
        policy = ACTPolicy.from_pretrained(path).to(device).eval()
    pre, post = make_pre_post_processors(
        policy.config, pretrained_path=path, preprocessor_overrides={"device_processor": {"device": device}}
    )
    assert_no_hooks(policy, "the plain LeRobot policy")
    return PlainPolicy(policy, pre, post)


def registered_hooks(module: torch.nn.Module) -> list[str]:
    """``"<submodule>: <kind> x<count>"`` for every forward/backward (pre-)hook on ``module`` or its
    submodules, plus torch's global module hooks (which would run on every module)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    found = [
        f"{name or '<root>'}: {kind} x{len(getattr(sub, kind))}"
        for name, sub in module.named_modules()
        for kind in kinds
        if getattr(sub, kind, None)
    ]
    from torch.nn.modules import module as torch_module

    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch_module, kind, None):
            found.append(f"torch global: {kind} x{len(getattr(torch_module, kind))}")
    return found


def assert_no_hooks(module: torch.nn.Module, what: str) -> None:
    hooks = registered_hooks(module)
    if hooks:
        raise AssertionError(f"{what} must run without hooks, but has: {', '.join(hooks)}")
