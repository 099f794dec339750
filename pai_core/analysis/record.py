"""Record SAE feature activations of dataset episodes to Parquet (``pai record-features``).

One row per frame. Features are stored sparsely (indices + values of the features above a threshold),
and, per camera, where each active feature peaks in the image (token row/col of its maximum), so a
feature can be located without re-running the policy. Frames go through ``Pipeline.step_batch``, the
same code the node and replay run.

Output folder: ``activations.parquet`` and ``record.json`` (what was recorded, with what, token grid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ConfigError, ModelError, ObservationError, UsageError
from ..observation import camera_short

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from ..layout import TokenLayout
    from ..observation import Observation
    from ..pipeline import Frame

log = logging.getLogger(__name__)

PARQUET_NAME = "activations.parquet"
META_NAME = "record.json"


@dataclass
class RecordConfig:
    """What to record.

    Args:
        dataset_repo_id: LeRobot dataset id (local under ``root`` or on the hub).
        policy_path: LeRobot ``pretrained_model`` directory or hub id.
        sae_path: SAE directory (``pai train-sae`` output).
        output_dir: folder for ``activations.parquet`` and ``record.json`` (created).
        root: local dataset root, or None for the hub cache.
        episodes: episode indices to record; None or empty records all episodes.
        batch_size: frames per ``Pipeline.step_batch`` call.
        device: torch device ("cpu", "cuda").
        min_activation: a feature counts as active in a frame (and is stored) when above this value.
        model_dtype: dtype the policy runs in ("float32" as saved, "bfloat16", "float16").
        policy_overrides: policy config fields set before the policy is built (``policy.apply_overrides``).
    """

    dataset_repo_id: str
    policy_path: str
    sae_path: str
    output_dir: str
    root: str | None = None
    episodes: list[int] | None = None
    batch_size: int = 16
    device: str = "cpu"
    min_activation: float = 0.0
    extra: dict = field(default_factory=dict)
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    policy_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1")
        if self.min_activation < 0:
            raise ConfigError(f"min_activation={self.min_activation} must be >= 0")
        if not self.sae_path:
            raise ConfigError("sae_path is required: features come from an SAE")


def camera_short_names(names: Sequence[str]) -> dict[str, str]:
    """Policy camera feature name -> short column prefix (``observation.images.front`` -> ``front``)."""
    short = {n: camera_short(n) for n in names}
    if len(set(short.values())) < len(short):
        short = {n: n.replace(".", "_") for n in names}
    return short


def _schema(shorts: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field("index", pa.int64()),
        pa.field("episode_index", pa.int32()),
        pa.field("frame_index", pa.int32()),
        pa.field("timestamp", pa.float64()),
        pa.field("feature_indices", pa.list_(pa.int32())),
        pa.field("feature_values", pa.list_(pa.float32())),
        pa.field("ood_score", pa.float32()),
    ]
    fields += [  # peaks on the latent / state / env-state tokens (token index into the sequence)
        pa.field("nonimage.feature", pa.list_(pa.int32())),
        pa.field("nonimage.value", pa.list_(pa.float32())),
        pa.field("nonimage.token", pa.list_(pa.int16())),
    ]
    for s in shorts:
        fields += [
            pa.field(f"{s}.feature", pa.list_(pa.int32())),
            pa.field(f"{s}.value", pa.list_(pa.float32())),
            pa.field(f"{s}.row", pa.list_(pa.int16())),
            pa.field(f"{s}.col", pa.list_(pa.int16())),
        ]
    return pa.schema(fields)


def spatial_maxima(
    codes: torch.Tensor, layout: TokenLayout, min_activation: float
) -> dict[str, tuple[np.ndarray, ...]]:
    """Per camera: (feature, value, row, col) of every feature whose maximum over the camera's tokens
    exceeds ``min_activation``; row/col index the camera's token grid (as ``features.feature_maps``).

    codes: (S, n_latents) one frame's token codes.
    """
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for cam in layout.cameras:
        values, pos = codes[cam.start : cam.stop].max(dim=0)
        keep = (values > min_activation).nonzero().flatten()
        v = values[keep].float().cpu().numpy()
        p = pos[keep].cpu().numpy()
        out[cam.name] = (
            keep.cpu().numpy().astype(np.int32),
            v.astype(np.float32),
            (p // cam.width).astype(np.int16),
            (p % cam.width).astype(np.int16),
        )
    return out


def nonimage_tokens(layout: TokenLayout) -> dict[str, int]:
    """Token index of the latent, state and env-state tokens present in the layout."""
    named = {"latent": layout.latent_index, "state": layout.state_index, "env_state": layout.env_state_index}
    return {k: v for k, v in named.items() if v is not None}


def nonimage_maxima(codes: torch.Tensor, layout: TokenLayout, min_activation: float) -> tuple[np.ndarray, ...]:
    """(feature, value, token) of every feature whose maximum over the non-image tokens exceeds
    ``min_activation``. codes: (S, n_latents)."""
    tokens = sorted(nonimage_tokens(layout).values())
    values, pos = codes[tokens].max(dim=0)
    keep = (values > min_activation).nonzero().flatten()
    token = np.asarray(tokens, np.int16)[pos[keep].cpu().numpy()]
    return keep.cpu().numpy().astype(np.int32), values[keep].float().cpu().numpy().astype(np.float32), token


def _rows(
    frames: Sequence[Frame], indices: list[int], shorts: dict[str, str], min_activation: float
) -> dict[str, list]:
    cols: dict[str, list] = {name: [] for name in _schema(list(shorts.values())).names}
    for frame, index in zip(frames, indices):
        obs = frame.observation
        feats = np.asarray(frame.features, dtype=np.float32)
        active = np.flatnonzero(feats > min_activation).astype(np.int32)
        cols["index"].append(index)
        cols["episode_index"].append(obs.episode_index)
        cols["frame_index"].append(obs.frame_index)
        cols["timestamp"].append(obs.timestamp)
        cols["feature_indices"].append(active)
        cols["feature_values"].append(feats[active])
        cols["ood_score"].append(frame.ood_score)
        codes = frame.codes
        if codes is None:
            raise ModelError("the feature recording reads each frame's token codes (Pipeline.keep_codes)")
        f, v, t = nonimage_maxima(codes, frame.result.layout, min_activation)
        cols["nonimage.feature"].append(f)
        cols["nonimage.value"].append(v)
        cols["nonimage.token"].append(t)
        for cam, (f, v, r, c) in spatial_maxima(codes, frame.result.layout, min_activation).items():
            s = shorts[cam]
            cols[f"{s}.feature"].append(f)
            cols[f"{s}.value"].append(v)
            cols[f"{s}.row"].append(r)
            cols[f"{s}.col"].append(c)
    return cols


class _RowSink:
    """Each batch's rows to the Parquet file; counts every episode's frames (``begin``: the episode)."""

    def __init__(
        self,
        writer: Any,
        schema: Any,
        shorts: dict[str, str],
        min_activation: float,
        bounds: dict[int, tuple[int, int]],
    ):
        self.writer, self.schema, self.shorts, self.min_activation = writer, schema, shorts, min_activation
        self.bounds = bounds
        self.counts: dict[int, int] = {}
        self.layout: Any = None
        self.episode = -1

    def begin(self, episode: int) -> None:
        self.episode = episode
        self.counts[episode] = 0

    def write(self, frames: Sequence[Frame]) -> None:
        import pyarrow as pa

        first = self.bounds[self.episode][0] + self.counts[self.episode]  # dataset index of the batch's first frame
        indices = list(range(first, first + len(frames)))
        self.layout = frames[0].result.layout
        self.writer.write_table(pa.table(_rows(frames, indices, self.shorts, self.min_activation), schema=self.schema))
        self.counts[self.episode] += len(frames)

    def close(self) -> None:
        pass


def record_features(config: RecordConfig, progress: bool = True) -> dict:
    """Run the pipeline over the chosen episodes and write Parquet + metadata; returns the metadata."""
    import pyarrow.parquet as pq
    import torch

    from ..engine import IntrospectionConfig
    from ..pipeline import Pipeline
    from ..replay.runner import RunConfig, Segment, run_segments
    from ..sources.dataset import episode_bounds, iter_episode, open_dataset, select_episodes

    dataset = open_dataset(config.dataset_repo_id, config.root)
    episodes = select_episodes(dataset, config.episodes)
    engine_config = IntrospectionConfig(
        device=config.device, model_dtype=config.model_dtype, policy_overrides=config.policy_overrides
    )
    pipe = Pipeline.load(config.policy_path, config.sae_path, device=config.device, engine_config=engine_config)
    pipe.keep_codes = True
    missing = [k for k in pipe.engine.image_shapes if k not in dataset.meta.camera_keys]
    if missing:
        raise ObservationError(
            f"Dataset {config.dataset_repo_id!r} lacks the policy's cameras {missing}; it has "
            f"{list(dataset.meta.camera_keys)}"
        )
    shorts = camera_short_names(list(pipe.engine.image_shapes))
    schema = _schema(list(shorts.values()))
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = {ep: episode_bounds(dataset, ep) for ep in episodes}
    total = sum(stop - start for start, stop in bounds.values())
    tmp = out_dir / (PARQUET_NAME + ".tmp")

    def observations(ep: int) -> Iterator[Observation]:
        for obs in iter_episode(dataset, ep):
            obs.episode_index = ep if obs.episode_index < 0 else obs.episode_index
            yield obs

    run_config = RunConfig(config.batch_size, progress=progress, desc="record-features", rejected="raise")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer, torch.inference_mode():
        rows = _RowSink(writer, schema, shorts, config.min_activation, bounds)
        run_segments((Segment(ep, observations(ep)) for ep in episodes), pipe, [rows], config=run_config, total=total)
    counts, layout = rows.counts, rows.layout
    tmp.replace(out_dir / PARQUET_NAME)
    expected = {ep: stop - start for ep, (start, stop) in bounds.items()}
    short_of = {ep: expected[ep] - n for ep, n in counts.items() if n != expected[ep]}
    if short_of:
        log.warning("frames missing from the recording (episode: count): %s", short_of)
    if pipe.extractor is None:
        raise ModelError("recording features needs a pipeline with an SAE")
    sae_cfg = pipe.extractor.sae.config
    meta = {
        "config": asdict(config),
        "dataset_repo_id": config.dataset_repo_id,
        "root": str(Path(config.root).resolve()) if config.root else None,
        "policy_path": _absolute_if_local(config.policy_path),
        "sae_path": _absolute_if_local(config.sae_path),
        "fps": float(dataset.fps),
        "n_latents": int(sae_cfg.n_latents),
        "pooling": sae_cfg.pooling,
        "layer": sae_cfg.layer,
        "min_activation": config.min_activation,
        "episodes": {
            str(ep): {"frames": counts[ep], "expected": expected[ep], "start_index": bounds[ep][0]} for ep in episodes
        },
        "n_frames": int(sum(counts.values())),
        "frames_missing": int(sum(short_of.values())),
        "nonimage_tokens": nonimage_tokens(layout) if layout else {},
        "cameras": [
            {
                "name": c.name,
                "short": shorts[c.name],
                "token_rows": c.height,
                "token_cols": c.width,
                "image_height": pipe.engine.image_shapes[c.name][0],
                "image_width": pipe.engine.image_shapes[c.name][1],
            }
            for c in (layout.cameras if layout else [])
        ],
    }
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=2))
    return meta


def _absolute_if_local(path_or_id: str) -> str:
    """Local paths become absolute (so analysis runs from any folder); hub ids stay as they are."""
    return str(Path(path_or_id).resolve()) if Path(path_or_id).exists() else path_or_id


def load_record(record_dir: str | Path) -> tuple[dict, pa.Table]:
    """(metadata, pyarrow Table) of a ``pai record-features`` output folder."""
    import pyarrow.parquet as pq

    record_dir = Path(record_dir)
    meta_file, table_file = record_dir / META_NAME, record_dir / PARQUET_NAME
    if not meta_file.is_file() or not table_file.is_file():
        raise UsageError(f"{record_dir} is not a record-features output: it needs {META_NAME} and {PARQUET_NAME}")
    return json.loads(meta_file.read_text()), pq.read_table(table_file)
