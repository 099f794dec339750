"""pai_core: introspection of LeRobot policies (attention, SAE features, OOD alarms). Never imports rclpy."""

from .engine import FrameResult, IntrospectionConfig, Introspector
from .errors import InputError, ModelError, PaiError
from .layout import CameraTokens, TokenLayout
from .observation import Observation
from .overlay import OverlayConfig, render_overlays
from .pipeline import Frame, Pipeline

__version__ = "0.1.0"

__all__ = [
    "CameraTokens",
    "Frame",
    "FrameResult",
    "InputError",
    "IntrospectionConfig",
    "Introspector",
    "ModelError",
    "Observation",
    "OverlayConfig",
    "PaiError",
    "Pipeline",
    "TokenLayout",
    "render_overlays",
]
