"""``pai_core.ros_convert.OutputMessage`` -> rclpy message, generically (no per-type code).

Replay builds the same messages with ``pai_core.ros_convert.to_rosbags``; both read the same field dicts,
so the node and replay's MCAP hold identical values.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from pai_core.ros_convert import OutputMessage
from pai_core.ros_qos import message_class


def to_rclpy(message: OutputMessage) -> Any:
    return fill(message_class(message.msgtype)(), message.fields)


def fill(msg: Any, values: dict) -> Any:
    """Set ``values`` (nested dicts, numpy arrays) on an rclpy message; missing fields keep defaults."""
    types = msg.get_fields_and_field_types()
    for name, value in values.items():
        kind = types[name]
        if isinstance(value, dict):
            fill(getattr(msg, name), value)
        elif kind.startswith("sequence<") and "/" in kind:
            cls = message_class(kind[len("sequence<") :].split(",")[0].rstrip(">"))
            setattr(msg, name, [fill(cls(), v) for v in value])
        elif isinstance(value, np.ndarray):
            if kind.startswith("sequence<") or "[" in kind:
                buf = array.array(value.dtype.char)
                buf.frombytes(np.ascontiguousarray(value).tobytes())
                setattr(msg, name, buf)
            else:
                setattr(msg, name, value.item())
        else:
            setattr(msg, name, value)
    return msg
