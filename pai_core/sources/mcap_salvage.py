"""Reading what a truncated MCAP still holds.

A recording cut short (the robot lost power, the disk filled up) has no summary and no footer, so
indexed readers (rosbags, ``mcap``'s ``make_reader``) refuse the whole file. ``mcap``'s ``StreamReader``
reads records front to back and so recovers every complete chunk before the cut. ``SalvagedMcap`` offers
the part of rosbags' ``AnyReader`` interface that ``BagSource`` uses, deserialising with rosbags'
typestore, and says where the file breaks off.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcap.records import Channel, Message


@dataclass
class SalvagedConnection:
    """A channel of the salvaged file (the fields of a rosbags ``Connection`` that ``BagSource`` reads)."""

    id: int
    topic: str
    msgtype: str
    msgcount: int


class SalvagedMcap:
    """(module docstring). ``truncated_at``: bytes read before the cut; ``size``: the file's size."""

    def __init__(self, path: str | Path):
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.connections: list[SalvagedConnection] = []
        self.first_ns = self.last_ns = 0
        self.truncated_at = self.size
        self.error = ""
        from mcap.records import Channel

        counts: dict[int, int] = {}
        channels: dict[int, Channel] = {}
        for record in self._records():
            if isinstance(record, Channel):
                channels[record.id] = record
            else:
                counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                self.first_ns = record.log_time if not self.first_ns else min(self.first_ns, record.log_time)
                self.last_ns = max(self.last_ns, record.log_time)
        self.connections = [
            SalvagedConnection(cid, ch.topic, self._schemas.get(ch.schema_id, ""), counts.get(cid, 0))
            for cid, ch in channels.items()
        ]

    def _records(self) -> Iterator[Channel | Message]:
        """The channel and message records up to the cut; records where the file breaks off."""
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        self._schemas: dict[int, str] = {}
        with open(self.path, "rb") as f:
            reader = StreamReader(f, skip_magic=False, emit_chunks=False)
            try:
                for record in reader.records:
                    if isinstance(record, Schema):
                        self._schemas[record.id] = record.name
                    elif isinstance(record, (Channel, Message)):
                        yield record
            except Exception as exc:  # the cut: a partial record or chunk, a missing footer
                self.truncated_at = min(f.tell(), self.size)
                self.error = f"{type(exc).__name__}: {exc}"

    @property
    def truncated(self) -> bool:
        return bool(self.error)

    @property
    def duration(self) -> int:
        return self.last_ns - self.first_ns

    def messages(self, connections: Sequence[SalvagedConnection]) -> Iterator[tuple[SalvagedConnection, int, bytes]]:
        from mcap.records import Message

        wanted = {c.id: c for c in connections}
        for record in self._records():
            if isinstance(record, Message) and record.channel_id in wanted:
                yield wanted[record.channel_id], record.log_time, record.data

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(raw, msgtype)

    def describe(self) -> str:
        return (
            f"{self.path} is truncated at byte {self.truncated_at:,} of {self.size:,} "
            f"({100 * self.truncated_at / max(self.size, 1):.0f} %): its complete chunks were read "
            f"({sum(c.msgcount for c in self.connections)} messages); whatever was recorded after them is lost"
        )

    def close(self) -> None:
        pass


__all__ = ["SalvagedConnection", "SalvagedMcap"]
