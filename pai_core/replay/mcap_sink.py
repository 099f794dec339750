"""``replay.mcap``: the node's topics as ROS 2 CDR messages with ``ros2msg`` schemas (opens in Foxglove;
readable by the ``mcap`` readers and by ``rosbags.highlevel.AnyReader``)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from .encoding import Encoded, msgdef


class McapWriter:
    def __init__(self, path: str | Path):
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self._file: BinaryIO | None = open(self.path, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="pai replay")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._seq: dict[str, int] = {}

    def write(self, message: Encoded) -> None:
        channel = self._channels.get(message.topic)
        if channel is None:
            schema = self._schemas.get(message.msgtype)
            if schema is None:
                schema = self._writer.register_schema(message.msgtype, "ros2msg", msgdef(message.msgtype).encode())
                self._schemas[message.msgtype] = schema
            channel = self._writer.register_channel(message.topic, "cdr", schema)
            self._channels[message.topic] = channel
        seq = self._seq.get(message.topic, 0)
        self._seq[message.topic] = seq + 1
        self._writer.add_message(channel, message.log_time_ns, message.data, message.log_time_ns, sequence=seq)

    def close(self) -> None:
        if self._file is not None:
            self._writer.finish()
            self._file.close()
            self._file = None
