"""What a policy's forward must not do while a CUDA graph is captured, and the fix that keeps the policy's
own code untouched.

A CUDA graph records kernels on the device; a host-to-device copy from pageable memory inside the capture
is an error. LeRobot's ACT builds its zero latent on the CPU and copies it over
(``torch.zeros([B, latent_dim], dtype=float32).to(device)`` in ``ACT.forward``), and LeRobot's MIN_MAX and
QUANTILE normalisers build their epsilon with ``torch.tensor(eps, device=cuda)``. While ``DeviceFactories``
is active, a tensor factory called without a device creates its tensor on the target device (the ``.to``
that follows is then a no-op) and a Python scalar given to ``torch.tensor`` for a non-CPU device becomes
``torch.full`` (a fill kernel instead of a copy). Values are unchanged: zeros are zeros, a scalar is that
scalar; on the CPU it redirects to the CPU, so outputs are bit-identical there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: factories that take ``device=`` and, without it, allocate on the CPU.
FACTORIES = frozenset(
    {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.eye, torch.linspace, torch.rand, torch.randn}
)


class DeviceFactories(TorchFunctionMode):
    """Tensor factories without a device allocate on ``device``; scalar ``torch.tensor`` on a non-CPU device
    is a fill. ``redirected`` names every call it changed (what a test checks).

    Args:
        device: the device the policy runs on.
    """

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device)
        self.redirected: list[str] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = self.device
            self.redirected.append(func.__name__)
        elif func is torch.tensor and args and _is_scalar(args[0]):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                value = args[0]
                dtype = kwargs.get("dtype") or _scalar_dtype(value)
                self.redirected.append("tensor")
                return torch.full((), value, dtype=dtype, device=device)
        return func(*args, **kwargs)


def _is_scalar(value: object) -> bool:
    return isinstance(value, (bool, int, float))


def _scalar_dtype(value: bool | int | float) -> torch.dtype:
    """The dtype ``torch.tensor`` infers for a Python scalar."""
    if isinstance(value, bool):
        return torch.bool
    if isinstance(value, int):
        return torch.int64
    return torch.get_default_dtype()


__all__ = ["DeviceFactories", "FACTORIES"]
