"""pai_core: introspection of LeRobot policies (attention, SAE features, OOD alarms). Never imports rclpy.

The names below load on first use (PEP 562), so ``import pai_core.settings`` or ``pai --help`` does not pay
for torch, OpenCV and the SAE; ``from pai_core import Introspector`` still works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import FrameResult, IntrospectionConfig, Introspector
    from .errors import ConfigError, InputError, ModelError, ObservationError, PaiError, UsageError
    from .foxglove_live import FoxgloveConfig, FoxgloveLive
    from .layout import CameraTokens, TokenLayout
    from .observation import Observation
    from .overlay import OverlayConfig, render_overlays
    from .pipeline import Frame, Pipeline

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY = {
    "CameraTokens": "layout",
    "ConfigError": "errors",
    "Frame": "pipeline",
    "FoxgloveConfig": "foxglove_live",
    "FoxgloveLive": "foxglove_live",
    "FrameResult": "engine",
    "InputError": "errors",
    "IntrospectionConfig": "engine",
    "Introspector": "engine",
    "ModelError": "errors",
    "Observation": "observation",
    "ObservationError": "errors",
    "OverlayConfig": "overlay",
    "PaiError": "errors",
    "Pipeline": "pipeline",
    "TokenLayout": "layout",
    "UsageError": "errors",
    "render_overlays": "overlay",
}

__all__ = [
    "CameraTokens",
    "ConfigError",
    "FoxgloveConfig",
    "FoxgloveLive",
    "Frame",
    "FrameResult",
    "InputError",
    "IntrospectionConfig",
    "Introspector",
    "ModelError",
    "Observation",
    "ObservationError",
    "OverlayConfig",
    "PaiError",
    "Pipeline",
    "TokenLayout",
    "UsageError",
    "render_overlays",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access and cache the value in this module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pai_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
