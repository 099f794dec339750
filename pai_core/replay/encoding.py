"""``OutputMessage`` -> ROS 2 CDR bytes and ``ros2msg`` schema text, with rosbags' type store.

One encoding for the MCAP file, the Foxglove server and ``--publish``, so all three carry the bytes
the live node would publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from ..ros_convert import OutputMessage, to_rosbags
from ..topics import resolve


@dataclass
class Encoded:
    topic: str  # absolute
    msgtype: str  # "sensor_msgs/msg/Image"
    data: bytes  # CDR
    log_time_ns: int


@lru_cache(maxsize=1)
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


@cache
def msgdef(msgtype: str) -> str:
    """The ``ros2msg`` schema text (with its dependencies) that MCAP and Foxglove expect."""
    text, _digest = typestore().generate_msgdef(msgtype, ros_version=2)
    return text


def encode(message: OutputMessage, namespace: str, log_time_ns: int | None = None) -> Encoded:
    store = typestore()
    data = bytes(store.serialize_cdr(to_rosbags(message, store), message.msgtype))
    topic = resolve(message.topic, namespace=namespace)
    log = int(log_time_ns) if log_time_ns is not None else int(round(message.stamp * 1e9))
    return Encoded(topic, message.msgtype, data, log)
