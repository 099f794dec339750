"""Per-frame tables: ``features.parquet``, ``ood.parquet`` and ``attention.parquet`` (pyarrow).

Row groups are flushed as the replay runs, so a replay that breaks off keeps every processed frame.

Layouts (one row per processed frame, in time order; ``episode``, ``frame``, ``timestamp`` first):
- features.parquet: ``feature_index`` list<int32> and ``feature_value`` list<float32> hold the frame's
  non-zero pooled SAE activations (TopK codes are sparse); ``n_features`` and ``feature_names`` (JSON) are
  in the schema metadata. ``dense_features`` turns it into a (frames, n_features) float32 array.
- ood.parquet: ``score``, ``threshold``, ``alarm`` (bool), ``above`` (frames above threshold in the
  alarm window), ``reason``.
- attention.parquet: ``latent_share``, ``state_share``, ``share_<camera>`` per camera, ``action``
  list<float32> (first action of the chunk).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline import Frame
from ..topics import camera_short
from .run_info import RunInfo

KEYS = ("episode", "frame", "timestamp")


class _Table:
    """A Parquet file written in row groups of ``flush_every`` rows."""

    def __init__(self, path: Path, schema: Any, flush_every: int = 256):  # a pyarrow.Schema (pyarrow ships no types)
        self.path, self.schema, self.flush_every = path, schema, flush_every
        self.rows: dict[str, list] = {name: [] for name in schema.names}
        self.writer: Any = None  # pyarrow.parquet.ParquetWriter, opened by the first flush
        self.count = 0

    def append(self, **values: Any) -> None:
        for name in self.schema.names:
            self.rows[name].append(values[name])
        self.count += 1
        if len(self.rows[self.schema.names[0]]) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        if self.rows[self.schema.names[0]]:
            self.writer.write_table(pa.Table.from_pydict(self.rows, schema=self.schema))
        self.rows = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()


class TableSink:
    """Writes the three tables; features and OOD only when the run has an SAE."""

    def __init__(self, output_dir: str | Path, info: RunInfo):
        import pyarrow as pa

        out = Path(output_dir)
        keys = [pa.field("episode", pa.int32()), pa.field("frame", pa.int64()), pa.field("timestamp", pa.float64())]
        self.cameras = list(info.cameras)
        attention = pa.schema(
            keys
            + [pa.field("latent_share", pa.float32()), pa.field("state_share", pa.float32())]
            + [pa.field(f"share_{camera_short(c)}", pa.float32()) for c in self.cameras]
            + [pa.field("action", pa.list_(pa.float32()))]
        )
        self.attention = _Table(out / "attention.parquet", attention)
        self.features = self.ood = None
        if info.has_sae:
            meta = {
                "n_features": str(info.n_features),
                "feature_names": json.dumps(info.feature_names()),
                "layout": "sparse: feature_index/feature_value list the non-zero activations",
            }
            self.features = _Table(
                out / "features.parquet",
                pa.schema(
                    keys
                    + [
                        pa.field("feature_index", pa.list_(pa.int32())),
                        pa.field("feature_value", pa.list_(pa.float32())),
                    ],
                    metadata=meta,
                ),
            )
            self.ood = _Table(
                out / "ood.parquet",
                pa.schema(
                    keys
                    + [
                        pa.field("score", pa.float64()),
                        pa.field("threshold", pa.float64()),
                        pa.field("alarm", pa.bool_()),
                        pa.field("above", pa.int32()),
                        pa.field("reason", pa.string()),
                        pa.field("state_coverage", pa.float64()),
                    ]  # patch_knn: > 1 = joint state not covered
                    + [pa.field(f"signal_{name}", pa.float64()) for name in info.signals]
                    + [pa.field(f"signal_{name}_threshold", pa.float64()) for name in info.signals]
                ),
            )
            self.signal_thresholds = info.signal_thresholds()

    def write(self, frames: Sequence[Frame]) -> None:
        for f in frames:
            obs, res = f.observation, f.result
            key = {"episode": int(obs.episode_index), "frame": int(obs.frame_index), "timestamp": float(obs.timestamp)}
            shares = {f"share_{camera_short(c)}": float(res.camera_share.get(c, 0.0)) for c in self.cameras}
            self.attention.append(
                **key,
                latent_share=res.latent_share,
                state_share=res.state_share,
                **shares,
                action=np.asarray(res.action, np.float32).tolist(),
            )
            if self.features is not None and f.features is not None:
                nz = np.flatnonzero(f.features)
                self.features.append(
                    **key,
                    feature_index=nz.astype(np.int32).tolist(),
                    feature_value=np.asarray(f.features[nz], np.float32).tolist(),
                )
            if self.ood is not None and f.ood_score is not None:
                self.ood.append(
                    **key,
                    score=f.ood_score,
                    threshold=f.threshold,
                    alarm=bool(f.alarm.active),
                    above=int(f.alarm.above),
                    reason=f.alarm.reason,
                    state_coverage=f.state_coverage,
                    **{f"signal_{k}": v for k, v in f.signals.items()},
                    **{f"signal_{k}_threshold": v for k, v in self.signal_thresholds.items()},
                )

    def close(self) -> None:
        for table in (self.attention, self.features, self.ood):
            if table is not None:
                table.close()


def dense_features(path: str | Path) -> np.ndarray:
    """features.parquet -> (frames, n_features) float32 activations."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    n = int(table.schema.metadata[b"n_features"])
    out = np.zeros((table.num_rows, n), np.float32)
    for row, (idx, val) in enumerate(
        zip(table.column("feature_index").to_pylist(), table.column("feature_value").to_pylist())
    ):
        out[row, idx] = val
    return out
