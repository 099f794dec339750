"""Replay's integrated-gradients outputs: ``<camera>_saliency.mp4`` per camera, ``side_by_side_saliency.mp4``
with two or more cameras, and ``saliency.parquet``.

saliency.parquet, one row per processed frame (``episode``, ``frame``, ``timestamp`` first):
``target`` (f at the frame, on the normalised actions), ``baseline_target`` (f at the black/zero baseline),
``attribution_sum`` and ``completeness_gap`` (attribution_sum - (target - baseline_target): the
quadrature error, shrinking with more steps), ``state_saliency`` (display scale, [0, 1]), ``share_state``
and ``share_<camera>`` (shares of the frame's |attribution|), ``state_attribution`` list<float32> (signed,
per joint). The schema metadata holds the ``SaliencyConfig`` as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..overlay import OverlayConfig
from ..pipeline import Frame
from ..saliency import IntegratedGradients, render_saliency
from ..topics import camera_short
from .run_info import RunInfo
from .tables import _Table
from .video import VideoSink


class SaliencySink:
    """Runs integrated gradients on every frame the replay processed (batched as the replay batches) and writes
    the videos and the table. The attributions are computed here, after the pipeline's own forward pass, so
    the other outputs stay exactly the pipeline's. It runs the model, so the runner calls it in its own thread
    (``runs_model``), never beside the next batch's forward pass.

    Args:
        ig: the attribution method (on the run's engine, with its ``SaliencyConfig``).
        info: the run's description (its cameras name the share columns).
    """

    runs_model = True

    def __init__(
        self,
        output_dir: str | Path,
        ig: IntegratedGradients,
        info: RunInfo,
        fps: float,
        overlay: OverlayConfig | None = None,
        video: bool = True,
    ):
        import pyarrow as pa

        out = Path(output_dir)
        self.ig = ig
        self.overlay = overlay or OverlayConfig()
        self.videos = VideoSink(out, fps, self.overlay, maps=()) if video else None
        self.cameras = list(info.cameras)
        fields = [
            pa.field("episode", pa.int32()),
            pa.field("frame", pa.int64()),
            pa.field("timestamp", pa.float64()),
            *(
                pa.field(name, pa.float64())
                for name in ("target", "baseline_target", "attribution_sum", "completeness_gap")
            ),
            pa.field("state_saliency", pa.float32()),
            pa.field("share_state", pa.float32()),
            *(pa.field(f"share_{camera_short(c)}", pa.float32()) for c in self.cameras),
            pa.field("state_attribution", pa.list_(pa.float32())),
        ]
        meta = {
            "saliency": json.dumps(dataclasses.asdict(ig.config)),
            "method": "integrated gradients, midpoint rule",
            "baseline": "black images, zero state",
        }
        self.table = _Table(out / "saliency.parquet", pa.schema(fields, metadata=meta))

    def write(self, frames: Sequence[Frame]) -> None:
        observations = [f.observation for f in frames]
        for obs, res in zip(observations, self.ig.attribute(observations)):
            state = res.attribution.get("observation.state", np.zeros(0, np.float32))
            self.table.append(
                episode=int(obs.episode_index),
                frame=int(obs.frame_index),
                timestamp=float(obs.timestamp),
                target=res.target,
                baseline_target=res.baseline_target,
                attribution_sum=res.completeness_gap + res.target - res.baseline_target,
                completeness_gap=res.completeness_gap,
                state_saliency=res.state_saliency,
                share_state=res.shares.get("observation.state", 0.0),
                **{f"share_{camera_short(c)}": res.shares.get(c, 0.0) for c in self.cameras},
                state_attribution=np.asarray(state, np.float32).tolist(),
            )
            if self.videos is not None:
                self.videos.write_overlays(render_saliency(obs, res, self.overlay), "saliency")

    def close(self) -> None:
        self.table.close()
        if self.videos is not None:
            self.videos.close()

    @property
    def files(self) -> dict[str, str]:
        out = {self.table.path.name: f"integrated-gradients attributions, {self.table.count} frames"}
        if self.videos is not None:
            out |= {name: f"{n} frames" for name, n in self.videos.files.items()}
        return out
