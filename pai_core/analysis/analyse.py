"""Rank recorded features and write what a person needs to name them (``pai analyse-features``).

Reads a ``pai record-features`` folder. Statistics come from the Parquet alone; the pictures (each top
frame with the feature's spatial map overlaid, and a short clip around the best frames) re-run only
those frames through ``Pipeline.step_batch`` and ``features.feature_maps``, so the maps are exact.

Output folder: ``summary.json``, ``feature_stats.csv`` (every feature), ``index.html`` and one
``feature_<id>/`` folder per selected feature (``feature.json``, ``top_<rank>.png``, ``clip_<rank>.mp4``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import ConfigError, ObservationError, UsageError
from .labels import LABELS_NAME, LabelStore
from .record import load_record
from .render import feature_panel, fit_height, index_html, write_clip, write_png
from .stats import RANK_BY, RankBy, feature_stats, rank_features, recorded_peak, top_frames

if TYPE_CHECKING:
    import pyarrow as pa

    from ..observation import Observation
    from ..pipeline import Frame
    from .stats import FeatureStats

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


@dataclass
class AnalyseConfig:
    """How to rank features and what to render.

    Args:
        record_dir: a ``pai record-features`` output folder.
        output_dir: where the analysis goes (created).
        top_features: how many ranked features get a folder with pictures.
        features: explicit feature ids to render instead of the ranking's top (ranking still written).
        top_frames: top-activating frames per feature.
        rank_by: one of ``RANK_BY`` ("variance", "frequency", "mean", "max").
        always_on: a feature active in at least this share of frames is flagged always-on.
        include_always_on: rank always-on features too (they are left out by default).
        min_frame_gap: top frames of one feature lie at least this many frames apart within an episode.
        clip_radius: frames each side of a top frame in its clip (0: no clips).
        clips_per_feature: how many of a feature's top frames get a clip.
        clip_format: "mp4" (H.264) or "gif".
        thumb_height: pixel height of the camera images in thumbnails and clips.
        colormap, alpha: heatmap look (``pai_core.overlay``).
        batch_size: frames per pipeline call when rendering.
        device: torch device.
        policy_path, sae_path, dataset_root: override the paths stored in ``record.json`` (moved files).
    """

    record_dir: str
    output_dir: str
    top_features: int = 20
    features: list[int] | None = None
    top_frames: int = 8
    rank_by: RankBy = "variance"
    always_on: float = 0.99
    include_always_on: bool = False
    min_frame_gap: int = 0
    clip_radius: int = 8
    clips_per_feature: int = 1
    clip_format: str = "mp4"
    thumb_height: int = 160
    colormap: str = "jet"
    alpha: float = 0.5
    batch_size: int = 16
    device: str = "cpu"
    policy_path: str = ""
    sae_path: str = ""
    dataset_root: str = ""

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"rank_by={self.rank_by!r} is not one of {list(RANK_BY)}")
        if self.clip_format not in ("mp4", "gif"):
            raise ConfigError(f"clip_format={self.clip_format!r} is not one of 'mp4', 'gif'")
        for name in ("top_features", "top_frames", "batch_size", "thumb_height"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("min_frame_gap", "clip_radius", "clips_per_feature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 < self.always_on <= 1.0:
            raise ConfigError(f"always_on={self.always_on} must be within (0, 1]")


def _render_frames(
    config: AnalyseConfig, meta: dict, need: dict[tuple[int, int], set[int]], feature_ids: list[int], progress: bool
) -> tuple[dict, dict, dict]:
    """Run the needed frames through the pipeline; returns, per (episode, frame_index), thumbnail-sized
    images by camera, {feature: {camera: (h, w) map}} and the pooled activation of each needed feature."""
    import torch

    from ..features import feature_maps
    from ..pipeline import Pipeline
    from ..replay.runner import RunConfig, Segment, run_segments
    from ..sources.dataset import iter_episode, open_dataset

    root = config.dataset_root or meta["root"]
    dataset = open_dataset(meta["dataset_repo_id"], root)
    pipe = Pipeline.load(
        config.policy_path or meta["policy_path"], config.sae_path or meta["sae_path"], device=config.device
    )
    pipe.keep_codes = True
    if pipe.n_features != meta["n_latents"]:
        raise UsageError(f"SAE has {pipe.n_features} features but the recording has {meta['n_latents']}")
    column = {f: j for j, f in enumerate(feature_ids)}
    images: dict = {}
    maps: dict = {}
    pooled: dict = {}

    def needed(ep: int) -> Iterator[Observation]:
        wanted = {fi for e, fi in need if e == ep}
        for obs in islice(iter_episode(dataset, ep), max(wanted) + 1):
            if obs.frame_index in wanted:
                yield obs

    class Render:
        """Thumbnails, the selected features' maps and their pooled activations of each needed frame."""

        def write(self, frames: Sequence[Frame]) -> None:
            fmaps = feature_maps(
                torch.stack([cast(torch.Tensor, f.codes) for f in frames]), frames[0].result.layout, feature_ids
            )
            for frame, m in zip(frames, fmaps):
                key = (frame.observation.episode_index, frame.observation.frame_index)
                images[key] = {cam: fit_height(frame.observation.images[cam], config.thumb_height) for cam in m}
                maps[key] = {f: {cam: m[cam][column[f]] for cam in m} for f in need[key]}
                pooled[key] = {f: float(cast(np.ndarray, frame.features)[f]) for f in need[key]}

        def close(self) -> None:
            pass

    segments = (Segment(ep, needed(ep)) for ep in sorted({ep for ep, _ in need}))
    run_config = RunConfig(config.batch_size, progress=progress, desc="render frames", rejected="raise")
    with torch.inference_mode():
        run_segments(segments, pipe, [Render()], config=run_config, total=len(need))
    lost = [k for k in need if k not in images]
    if lost:
        raise ObservationError(
            f"{len(lost)} recorded frames are no longer in the dataset, e.g. (episode, frame) {lost[0]}"
        )
    return images, maps, pooled


def analyse_features(config: AnalyseConfig, progress: bool = True) -> dict:
    """Rank, select, render and index; returns the summary (also written as ``summary.json``)."""
    meta, table = load_record(config.record_dir)
    n_latents = int(meta["n_latents"])
    stats = feature_stats(table, n_latents)
    ranking = rank_features(stats, config.rank_by, config.always_on, config.include_always_on)
    if config.features:
        bad = [f for f in config.features if not 0 <= f < n_latents]
        if bad:
            raise UsageError(f"features {bad} are outside 0..{n_latents - 1}")
        selected = list(dict.fromkeys(int(f) for f in config.features))
    else:
        selected = [int(f) for f in ranking[: config.top_features]]
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    episodes = table.column("episode_index").to_numpy()
    frame_idx = table.column("frame_index").to_numpy()
    ep_frames = {int(e): int(frame_idx[episodes == e].max()) for e in np.unique(episodes)}
    tops = {f: top_frames(table, f, config.top_frames, config.min_frame_gap) for f in selected}
    need: dict[tuple[int, int], set[int]] = {}
    clips: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for f, rows in tops.items():
        for rank, (row, _) in enumerate(rows):
            key = (int(episodes[row]), int(frame_idx[row]))
            need.setdefault(key, set()).add(f)
            if config.clip_radius and rank < config.clips_per_feature:
                lo, hi = max(0, key[1] - config.clip_radius), min(ep_frames[key[0]], key[1] + config.clip_radius)
                clips[(f, rank)] = [(key[0], fi) for fi in range(lo, hi + 1)]
                for k in clips[(f, rank)]:
                    need.setdefault(k, set()).add(f)
    images, maps, pooled = _render_frames(config, meta, need, selected, progress) if need else ({}, {}, {})

    labels = LabelStore(out / LABELS_NAME).all()
    shorts = {c["name"]: c["short"] for c in meta["cameras"]}
    timestamps = table.column("timestamp").to_numpy()
    index_col = table.column("index").to_numpy()
    features_out: list[dict[str, Any]] = []
    for f in selected:
        folder = out / f"feature_{f:05d}"
        folder.mkdir(exist_ok=True)
        frames_of_f = [k for k in need if f in need[k]]
        vmax = max((float(m.max()) for k in frames_of_f for m in maps[k][f].values()), default=0.0)
        entries = []
        for rank, (row, act) in enumerate(tops[f]):
            key = (int(episodes[row]), int(frame_idx[row]))
            where = _recorded_location(table, row, f, meta)
            caption = f"f{f}  #{rank + 1}  ep {key[0]} fr {key[1]}  act {act:.3g}"
            if where["peak_on"] and where["peak_on"] not in shorts.values():
                caption += f"  (peak on {where['peak_on']} token)"
            image = f"{folder.name}/top_{rank:02d}.png"
            panel = feature_panel(images[key], maps[key][f], vmax, caption, config.colormap, config.alpha)
            write_png(out / image, panel)
            clip = None
            if (f, rank) in clips:
                clip = f"{folder.name}/clip_{rank:02d}.{config.clip_format}"
                panels = [
                    feature_panel(
                        images[k],
                        maps[k][f],
                        vmax,
                        f"f{f}  ep {k[0]} fr {k[1]}" + ("  <" if k == key else ""),
                        config.colormap,
                        config.alpha,
                    )
                    for k in clips[(f, rank)]
                ]
                write_clip(out / clip, panels, float(meta["fps"]), config.clip_format)
            peaks = {}
            for cam, m in maps[key][f].items():
                r, c = np.unravel_index(int(np.argmax(m)), m.shape)
                peaks[shorts.get(cam, cam)] = {"value": float(m.max()), "row": int(r), "col": int(c)}
            entries.append(
                {
                    "rank": rank,
                    "row": int(row),
                    "index": int(index_col[row]),
                    "episode_index": key[0],
                    "frame_index": key[1],
                    "timestamp": float(timestamps[row]),
                    "activation": act,
                    "recomputed_activation": pooled[key][f],
                    **where,
                    "map_peak": peaks,
                    "image": image,
                    "clip": clip,
                }
            )
        doc = {
            "feature": f,
            "label": labels.get(f),
            "stats": stats.row(f),
            "rank": int(np.flatnonzero(ranking == f)[0]) if f in ranking else None,
            "map_max": vmax,
            "top_frames": entries,
            "json": f"{folder.name}/feature.json",
        }
        (folder / "feature.json").write_text(json.dumps(doc, indent=2))
        features_out.append(doc)

    always_on = stats.always_on(config.always_on)
    summary = {
        "dataset_repo_id": meta["dataset_repo_id"],
        "policy_path": meta["policy_path"],
        "sae_path": meta["sae_path"],
        "record_dir": str(Path(config.record_dir).resolve()),
        "config": asdict(config),
        "n_frames": stats.n_frames,
        "n_latents": n_latents,
        "episodes": sorted(meta["episodes"], key=int),
        "fps": meta["fps"],
        "cameras": meta["cameras"],
        "rank_by": config.rank_by,
        "always_on_threshold": config.always_on,
        "counts": {
            "dead": int(stats.dead.size),
            "always_on": int(always_on.size),
            "active": int(n_latents - stats.dead.size - always_on.size),
            "ranked": int(ranking.size),
        },
        "dead_features": stats.dead.tolist(),
        "always_on_features": always_on.tolist(),
        "ranking": ranking[:1000].tolist(),
        "features": [
            {
                "feature": d["feature"],
                "rank": d["rank"],
                "stats": d["stats"],
                "json": d["json"],
                "thumbnail": d["top_frames"][0]["image"] if d["top_frames"] else None,
            }
            for d in features_out
        ],
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    _write_stats_csv(out / "feature_stats.csv", stats, always_on)
    (out / "index.html").write_text(index_html(summary, features_out, labels))
    return summary


def _recorded_location(table: pa.Table, row: int, feature: int, meta: dict) -> dict:
    """Where the recording says a feature peaked in one frame: per camera (token row/col), on a non-image
    token (latent/state), and which of these is strongest ("peak_on")."""
    shorts = [c["short"] for c in meta["cameras"]]
    spatial = {s: recorded_peak(table, row, feature, s) for s in shorts}
    nonimage = recorded_peak(table, row, feature, "nonimage", ("token",))
    strength = {s: p["value"] for s, p in spatial.items() if p}
    if nonimage:
        names = {v: k for k, v in meta.get("nonimage_tokens", {}).items()}
        nonimage["name"] = names.get(nonimage["token"], str(nonimage["token"]))
        strength[nonimage["name"]] = nonimage["value"]
    return {
        "peak_on": max(strength, key=lambda s: strength[s]) if strength else None,
        "spatial": spatial,
        "nonimage": nonimage,
    }


def _write_stats_csv(path: Path, stats: FeatureStats, always_on: np.ndarray) -> None:
    import pandas as pd

    flag = np.full(stats.count.size, "", dtype=object)
    flag[stats.dead] = "dead"
    flag[always_on] = "always_on"
    pd.DataFrame(
        {
            "feature": np.arange(stats.count.size),
            "count": stats.count,
            "frequency": stats.frequency,
            "mean": stats.mean,
            "variance": stats.variance,
            "max": stats.max,
            "flag": flag,
        }
    ).to_csv(path, index=False, float_format="%.6g")
