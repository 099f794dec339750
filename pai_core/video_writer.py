"""The one H.264 writer: RGB frames -> MP4 through PyAV (replay overlays, feature clips, simulator rollouts)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from av.container import OutputContainer
    from av.video.stream import VideoStream


class Mp4Writer:
    """RGB uint8 frames -> H.264 mp4 (yuv420p; odd sizes are padded by one edge pixel, as H.264 needs). The
    stream opens on the first frame, which fixes the size.

    Args:
        crf: constant rate factor (lower: better and larger; 23 is libx264's default).
        preset: libx264 speed/size trade-off ("veryfast" for long replays, "medium" for short clips).
        faststart: move the index to the front, so a browser plays the file while it downloads.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23, preset: str = "veryfast", faststart: bool = False):
        self.path, self.fps, self.crf, self.preset, self.faststart = Path(path), fps, crf, preset, faststart
        self.container: OutputContainer | None = None
        self.stream: VideoStream | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.container is None or self.stream is None:
            self.container = av.open(str(self.path), "w")
            rate = Fraction(self.fps).limit_denominator(1001)
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.width, self.stream.height = rgb.shape[1], rgb.shape[0]
            self.stream.pix_fmt = "yuv420p"
            options: dict[str, object] = {"crf": str(self.crf), "preset": self.preset}
            if self.faststart:
                options["movflags"] = "+faststart"
            self.stream.options = options
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is not None and self.stream is not None:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
            self.container = None


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, **options: Any) -> int:
    """Write every frame to ``path`` (``Mp4Writer`` options); returns the number of frames written."""
    writer = Mp4Writer(path, fps, **options)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
    return writer.frames
