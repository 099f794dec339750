"""``--publish``: the replay's messages on live ROS 2 topics, as the node publishes them.

The one module of pai_core that touches rclpy, and only when a ``RosPublisher`` is created (never at
import time), so pai_core stays usable without ROS. Messages are the CDR bytes of ``encoding`` published
raw, so they are byte-identical to the MCAP file's.
"""

from __future__ import annotations

from typing import Any

from ..errors import PaiError
from ..ros_qos import message_class, output_qos
from .encoding import Encoded


class RosPublisher:
    """Creates a node ``pai_replay`` and one publisher per topic on first use."""

    def __init__(self, namespace: str = "/pai_introspector", node_name: str = "pai_replay"):
        try:
            import rclpy
        except ImportError as exc:
            raise PaiError(f"--publish needs rclpy (ROS 2 Python), which is not importable here: {exc}") from exc
        self._rclpy = rclpy
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init()
        self.node = rclpy.create_node(node_name)
        self.namespace = namespace
        self._publishers: dict[str, Any] = {}  # topic -> rclpy Publisher

    def _publisher(self, message: Encoded) -> Any:
        pub = self._publishers.get(message.topic)
        if pub is None:
            pub = self.node.create_publisher(
                message_class(message.msgtype), message.topic, output_qos(message.topic, self.namespace)
            )
            self._publishers[message.topic] = pub
        return pub

    def write(self, message: Encoded) -> None:
        self._publisher(message).publish(message.data)

    def close(self) -> None:
        self.node.destroy_node()
        if self._owns_context and self._rclpy.ok():
            self._rclpy.shutdown()
