"""The one table of how pai's output topics are published (QoS) and the one message-class lookup, shared by
the live node, ``pai replay --publish`` and the bag player, so a subscriber sees the same topic the same way
from every source. rclpy is imported only when a profile or class is asked for (pai_core imports no rclpy
at module level)."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from . import topics

# Transient local: a viewer or a safety monitor that connects late still gets the current alarm, stop request
# and feature names.
LATCHED_TOPICS = (topics.ALARM, topics.SAFE_STOP, topics.FEATURE_NAMES)
STREAM_DEPTH = 10  # reliable, keep the last 10: a replay publishing a batch at once loses nothing


def is_latched(topic: str, namespace: str = f"/{topics.NODE_NAME}") -> bool:
    """``topic`` relative (``~/alarm``) or resolved in ``namespace`` (``/pai_introspector/alarm``)."""
    return topic in LATCHED_TOPICS or topic in {topics.resolve(t, namespace=namespace) for t in LATCHED_TOPICS}


@cache
def qos_profile(latched: bool) -> Any:
    """The rclpy QoSProfile of a latched or a streamed output topic."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    if latched:
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(depth=STREAM_DEPTH, reliability=ReliabilityPolicy.RELIABLE)


def output_qos(topic: str, namespace: str = f"/{topics.NODE_NAME}") -> Any:
    return qos_profile(is_latched(topic, namespace))


@cache
def message_class(msgtype: str) -> type:
    """ "sensor_msgs/msg/Image" or "std_msgs/Header" -> the rclpy message class."""
    parts = msgtype.split("/")
    package, name = parts[0], parts[-1]
    return getattr(importlib.import_module(f"{package}.msg"), name)


__all__ = ["LATCHED_TOPICS", "is_latched", "message_class", "output_qos", "qos_profile"]
