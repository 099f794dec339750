"""``--foxglove``: stream the replay to a local Foxglove WebSocket server (foxglove-sdk) as it runs."""

from __future__ import annotations

from .encoding import Encoded, msgdef


class FoxgloveWriter:
    """Serves on ``ws://host:port``; every topic is a CDR channel with its ``ros2msg`` schema."""

    def __init__(self, port: int = 8765, host: str = "127.0.0.1", name: str = "pai replay"):
        import foxglove

        self._foxglove = foxglove
        self.server = foxglove.start_server(name=name, host=host, port=port)
        self.port = self.server.port
        self._channels: dict[str, object] = {}

    def write(self, message: Encoded) -> None:
        channel = self._channels.get(message.topic)
        if channel is None:
            schema = self._foxglove.Schema(name=message.msgtype, encoding="ros2msg",
                                           data=msgdef(message.msgtype).encode())
            channel = self._foxglove.Channel(message.topic, schema=schema, message_encoding="cdr")
            self._channels[message.topic] = channel
        channel.log(message.data, log_time=message.log_time_ns)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self.server.stop()
