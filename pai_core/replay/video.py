"""Overlay videos per camera (attention, and OOD error maps when an SAE is loaded), H.264 (``video_writer``), and with
two or more cameras one side-by-side video of all of them per overlay kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..overlay import OverlayConfig, render_overlays
from ..pipeline import Frame
from ..topics import camera_short
from ..video_writer import Mp4Writer
from .run_info import RunInfo


def side_by_side(images: Sequence[np.ndarray]) -> np.ndarray:
    """RGB images of any sizes -> one (H, sum of widths, 3) image, left to right, each scaled to the height H of
    the tallest (aspect kept), so cameras of different resolutions line up."""
    height = max(img.shape[0] for img in images)
    scaled = [
        img
        if img.shape[0] == height
        else cv2.resize(
            img, (max(1, round(img.shape[1] * height / img.shape[0])), height), interpolation=cv2.INTER_LINEAR
        )
        for img in images
    ]
    return np.hstack(scaled)


class OverlayRenders:
    """Each frame's attention overlays rendered once for every sink that shows them (the videos, and the
    MCAP / Foxglove / ROS images); at most ``size`` frames are held (the last consumer lets go of its own)."""

    def __init__(self, config: OverlayConfig | None = None, size: int = 32):
        self.config, self.size = config or OverlayConfig(), size
        self._renders: dict[int, tuple[Frame, dict[str, np.ndarray]]] = {}

    def attention(self, frame: Frame, last: bool = False) -> dict[str, np.ndarray]:
        """The frame's overlays; ``last``: no later sink needs them, so they are not kept."""
        hit = self._renders.pop(id(frame), None) if last else self._renders.get(id(frame))
        if hit is not None and hit[0] is frame:
            return hit[1]
        overlays = render_overlays(frame.observation, frame.result, self.config)
        if not last:
            self._renders[id(frame)] = (frame, overlays)  # the frame kept alive, so its id is not reused
            while len(self._renders) > self.size:
                del self._renders[next(iter(self._renders))]
        return overlays


class VideoSink:
    """``<camera>_attention.mp4`` per camera, plus ``<camera>_ood.mp4`` for frames with OOD maps; with two or
    more cameras also ``side_by_side_attention.mp4`` (and ``side_by_side_ood.mp4``): every camera in one frame,
    in the policy's camera order (the seed's combined video).

    Args:
        fps: frame rate of the written videos (the source's frame rate, so they play in real time).
        maps: which overlays to write: "attention" (or rollout, per ``overlay.source``) and "ood".
        info: the run's description; its OOD scale (from the score and threshold) puts the OOD maps on one
            fixed scale for the whole run (``run_info.ood_map_scale``). Without it each OOD frame is
            normalised on its own.
        renders: attention overlays shared with the other sinks (rendered here otherwise).
    """

    def __init__(
        self,
        output_dir: str | Path,
        fps: float,
        overlay: OverlayConfig | None = None,
        maps: Sequence[str] = ("attention", "ood"),
        info: RunInfo | None = None,
        renders: OverlayRenders | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.fps = fps if fps > 0 else 10.0
        self.overlay = overlay or OverlayConfig()
        self.maps = tuple(maps)
        self.ood_scale = info.ood_scale if info is not None else None
        self.renders = renders if renders is not None else OverlayRenders(self.overlay)
        self.writers: dict[tuple[str, str], Mp4Writer] = {}

    def _writer(self, camera: str, kind: str) -> Mp4Writer:
        key = (camera, kind)
        if key not in self.writers:
            self.writers[key] = Mp4Writer(self.output_dir / f"{camera_short(camera)}_{kind}.mp4", self.fps)
        return self.writers[key]

    def write_overlays(self, overlays: dict[str, np.ndarray], kind: str) -> None:
        """One frame of ``kind`` overlays (camera -> RGB): each camera's video and the side-by-side one."""
        for camera, rgb in overlays.items():
            self._writer(camera, kind).write(rgb)
        if len(overlays) > 1:
            self._writer("side_by_side", kind).write(side_by_side(list(overlays.values())))

    def write(self, frames: Sequence[Frame]) -> None:
        for f in frames:
            if "attention" in self.maps:
                self.write_overlays(self.renders.attention(f), "attention")
            if "ood" in self.maps and f.ood_maps:
                self.write_overlays(
                    render_overlays(f.observation, f.result, self.overlay, maps=f.ood_maps, scale=self.ood_scale), "ood"
                )

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    @property
    def files(self) -> dict[str, int]:
        return {w.path.name: w.frames for w in self.writers.values()}
