"""LeRobot dataset episodes as observations (LeRobotDataset v3, image or video mode)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..observation import Observation

if TYPE_CHECKING:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset


def open_dataset(repo_id: str, root: str | Path | None = None) -> LeRobotDataset:
    """Open a LeRobot dataset: a local copy under ``root`` or the hub id (downloaded when not local)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        return LeRobotDataset(repo_id, root=root)
    except Exception as exc:
        where = f" at {root}" if root else ""
        raise UsageError(f"Could not open LeRobot dataset {repo_id!r}{where}: {exc}") from exc


def open_dataset_spec(spec: str, datasets_dir: str | Path | None = None) -> LeRobotDataset:
    """A dataset named on a command line: a local dataset folder, a repo id with a local copy under
    ``datasets_dir`` (``datasets_dir/<repo id>``), or a hub repo id."""
    path = Path(spec)
    if path.is_dir():
        return open_dataset(path.name, path)
    if datasets_dir and (Path(datasets_dir) / spec).is_dir():
        return open_dataset(spec, Path(datasets_dir) / spec)
    return open_dataset(spec, None)


def episode_bounds(dataset: LeRobotDataset, episode: int) -> tuple[int, int]:
    """Absolute frame index range [start, stop) of one episode."""
    if not 0 <= episode < dataset.meta.total_episodes:
        raise UsageError(
            f"Episode {episode} not found: dataset {dataset.repo_id!r} has {dataset.meta.total_episodes} episodes"
        )
    ep = dataset.meta.episodes[episode]
    return int(ep["dataset_from_index"]), int(ep["dataset_to_index"])


def select_episodes(dataset: LeRobotDataset, episodes: Sequence[int] | None) -> list[int]:
    """All episodes when ``episodes`` is None or empty, else the given ones (checked)."""
    if not episodes:
        return list(range(dataset.meta.total_episodes))
    for ep in episodes:
        episode_bounds(dataset, ep)
    return list(episodes)


def to_uint8_image(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """LeRobot image tensor (C, H, W) float in [0, 1] -> (H, W, 3) uint8 RGB."""
    arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def item_to_observation(item: dict, camera_keys: Sequence[str]) -> Observation:
    state = item.get("observation.state")
    env = item.get("observation.environment_state")
    return Observation(
        images={k: to_uint8_image(item[k]) for k in camera_keys},
        state=None if state is None else state.numpy().astype(np.float32),
        env_state=None if env is None else env.numpy().astype(np.float32),
        timestamp=float(item["timestamp"]),
        frame_index=int(item["frame_index"]),
        episode_index=int(item["episode_index"]),
        extra={"action": item["action"].numpy()} if "action" in item else {},
    )


def iter_episode(
    dataset: LeRobotDataset, episode: int, first: int = 0, last: int | None = None
) -> Iterator[Observation]:
    """The frames ``first`` .. ``last - 1`` (offsets in the episode; default all) of one episode in time
    order, image or video datasets alike: every command reads frames here, never through
    ``dataset[i]``, whose video decoding needs torchcodec or ``torchvision.io.VideoReader`` (gone in
    torchvision 0.29)."""
    start, stop = episode_bounds(dataset, episode)
    stop = stop if last is None else min(stop, start + last)
    start = start + first
    keys = list(dataset.meta.camera_keys)
    if start >= stop:
        return
    if dataset.meta.video_keys:
        yield from _iter_video_episode(dataset, episode, start, stop, keys)
        return
    for idx in range(start, stop):
        yield item_to_observation(dataset[idx], keys)


def episode_table(dataset: LeRobotDataset, episode: int) -> dict[str, np.ndarray]:
    """An episode's table columns without decoding any image: ``frame_index`` (T,), ``timestamp`` (T,)
    and, where the dataset has it, ``observation.state`` (T, S). For choosing frames before any work."""
    start, stop = episode_bounds(dataset, episode)
    rows = _rows(dataset, start, stop, columns=("frame_index", "timestamp", "observation.state"))
    out = {
        "frame_index": np.asarray([int(r["frame_index"]) for r in rows], np.int64),
        "timestamp": np.asarray([float(r["timestamp"]) for r in rows], np.float64),
    }
    if rows and "observation.state" in rows[0]:
        out["observation.state"] = np.stack([np.asarray(r["observation.state"], np.float32) for r in rows])
    return out


def _rows(dataset: LeRobotDataset, start: int, stop: int, columns: Sequence[str] | None = None) -> list[dict]:
    """Table rows [start, stop) (absolute indices) of the dataset's Parquet data, no images decoded."""
    dataset._ensure_hf_dataset_loaded()
    table = dataset.hf_dataset
    if columns is not None:
        keep = [c for c in columns if c in table.column_names]
        table = table.select_columns(keep)
    rel = getattr(dataset, "_absolute_to_relative_idx", None)
    return [table[rel[i] if rel else i] for i in range(start, stop)]


def episode_length(dataset: LeRobotDataset, episode: int) -> int:
    start, stop = episode_bounds(dataset, episode)
    return stop - start


def _iter_video_episode(
    dataset: LeRobotDataset, episode: int, start: int, stop: int, keys: list[str]
) -> Iterator[Observation]:
    """Video datasets: table rows from the Parquet data, camera frames decoded with PyAV (``video.py``)
    in one sequential pass per camera instead of LeRobot's per-item seek, which needs torchcodec."""
    from .video import decode_at

    rows = _rows(dataset, start, stop)
    ep = dataset.meta.episodes[episode]
    tolerance = max(float(dataset.tolerance_s), 0.5 / float(dataset.fps))
    decoders = {}
    for key in keys:
        if key in dataset.meta.video_keys:
            offset = float(ep[f"videos/{key}/from_timestamp"])
            path = dataset.root / dataset.meta.get_video_file_path(episode, key)
            decoders[key] = decode_at(path, [offset + float(r["timestamp"]) for r in rows], tolerance)
    for row in rows:
        item = dict(row)
        for key, frames in decoders.items():
            item[key] = next(frames)
        yield item_to_observation(item, keys)
