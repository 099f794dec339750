"""Frames of an episode's video segment, decoded with PyAV directly.

LeRobot 0.4.4 cannot read its own videos here: torchcodec finds no FFmpeg libraries and its ``pyav``
backend calls ``torchvision.io.VideoReader``, removed in torchvision 0.29. PyAV bundles FFmpeg (with
dav1d for AV1), so one sequential decode of the episode's segment serves every frame in time order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ObservationError

if TYPE_CHECKING:
    from av.video.frame import VideoFrame


def decode_at(path: str | Path, timestamps: Sequence[float], tolerance_s: float) -> Iterator[np.ndarray]:
    """Yield the (H, W, 3) uint8 RGB frame nearest to each timestamp (seconds, increasing).

    Decodes sequentially from the keyframe before the first timestamp. A timestamp with no frame within
    ``tolerance_s`` is an error naming the file and the time.
    """
    import av

    path = Path(path)
    if not timestamps:
        return
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise ObservationError(f"Could not open video {path}: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = float(timestamps[0])
        if first > 0 and stream.time_base:
            container.seek(int(max(first - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
        frames = container.decode(stream)
        current = _next(frames, path)
        following = _next(frames, path)
        for ts in timestamps:
            # Advance while the next frame is at least as close to ts as the current one.
            while following is not None and current is not None and abs(following.time - ts) <= abs(current.time - ts):
                current, following = following, _next(frames, path)
            if current is None or abs(current.time - ts) > tolerance_s:
                got = "no frame" if current is None else f"nearest frame at {current.time:.4f} s"
                raise ObservationError(f"Video {path} has no frame at {ts:.4f} s (+-{tolerance_s:.4f} s): {got}")
            yield current.to_ndarray(format="rgb24")


def _next(frames: Iterator[VideoFrame], path: Path) -> VideoFrame | None:
    import av

    try:
        return next(frames, None)
    except av.FFmpegError as exc:
        raise ObservationError(f"Could not decode video {path}: {exc}") from exc
