"""Every frame as the live node's ROS 2 messages, fanned out to the MCAP file, Foxglove and ROS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..overlay import OverlayConfig
from ..pipeline import Frame
from ..ros_convert import OutputMessage, feature_names_message, frame_messages
from ..topics import NODE_NAME
from .encoding import Encoded, encode
from .run_info import RunInfo

if TYPE_CHECKING:
    from .video import OverlayRenders


class MessageWriter(Protocol):
    def write(self, message: Encoded) -> None: ...

    def close(self) -> None: ...


class MessageSink:
    """Builds each frame's messages once (``ros_convert.frame_messages``, as the node) and hands the
    encoded bytes to every writer. Log time is the bag's log time of the input when known, else its stamp.

    Args:
        namespace: node namespace the topics are resolved in (the node's default "/pai_introspector").
        renders: attention overlays shared with the videos (``video.OverlayRenders``, same overlay look).
    """

    def __init__(
        self,
        info: RunInfo,
        writers: Sequence[MessageWriter],
        overlay: OverlayConfig | None = None,
        compressed: bool = True,
        namespace: str = f"/{NODE_NAME}",
        renders: OverlayRenders | None = None,
    ):
        self.info, self.writers = info, list(writers)
        self.overlay, self.compressed, self.namespace = overlay or OverlayConfig(), compressed, namespace
        self.renders = renders
        self.counts: dict[str, int] = {}
        self._started = False

    def _send(self, message: OutputMessage, log_time_ns: int | None) -> None:
        enc = encode(message, self.namespace, log_time_ns)
        self.counts[enc.topic] = self.counts.get(enc.topic, 0) + 1
        for writer in self.writers:
            writer.write(enc)

    def write(self, frames: Sequence[Frame]) -> None:
        for f in frames:
            log = f.observation.extra.get("log_time_ns")
            if log is None:
                stamp_ns = f.observation.stamp_ns
                log = int(stamp_ns) if stamp_ns is not None else int(round(float(f.observation.timestamp) * 1e9))
            if not self._started and self.info.n_features:
                self._send(feature_names_message(self.info, f.observation.timestamp), log)
            self._started = True
            overlays = self.renders.attention(f, last=True) if self.renders is not None else None
            for message in frame_messages(f, self.info, self.overlay, compressed=self.compressed, overlays=overlays):
                self._send(message, log)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
