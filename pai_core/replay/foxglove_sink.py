"""``--foxglove``: stream the replay to a Foxglove WebSocket server as it runs; ``--foxglove-keep``: then
serve the whole replay again with Foxglove's playback controls.

The server (``pai_core.foxglove_live``) starts with every topic's channel before the first frame, and each
message goes out as soon as ``MessageSink`` has built it, frame by frame.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..foxglove_live import FoxgloveConfig, FoxgloveServer
from .encoding import Encoded

if TYPE_CHECKING:
    from ..foxglove_playback import PlaybackServer


class FoxgloveWriter:
    """A ``MessageWriter``: every encoded message to the live server at once. With ``keep``, closing it
    (the replay is over) switches to a ``PlaybackServer`` on the same port (``playback``; None when no
    frame was sent), which the caller closes."""

    def __init__(self, channels: dict[str, str], config: FoxgloveConfig | None = None, keep: bool = False):
        self.config = replace(config or FoxgloveConfig(), record=keep)
        self.keep = keep
        self.server = FoxgloveServer(channels, self.config)
        self.port = self.server.port
        self.playback: PlaybackServer | None = None

    def write(self, message: Encoded) -> None:
        self.server.log(message)

    def close(self) -> None:
        if not self.keep:
            self.server.close()
            return
        from ..foxglove_playback import PlaybackServer

        recording = self.server.finish()
        if recording is None:
            return
        if not recording.times:
            recording.file.close()
            return
        self.playback = PlaybackServer(recording, replace(self.config, port=self.port))
