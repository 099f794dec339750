"""Encoder tokens of a LeRobot dataset on disk, for SAE training.

A recording is a directory of safetensors shards plus ``activations.json`` (policy, layer, widths,
sampling, datasets). It may span several datasets (the seed's ``[repo_a,repo_b]``: ``parse_datasets``);
each shard holds one run of consecutive frames of one episode of one dataset:

    tokens        (N, S, D)  encoder tokens of N frames (S tokens each, D = dim_model)
    episode_index (N,)       int64
    frame_index   (N,)       int64
    dataset_index (N,)       int64, the dataset's position in the manifest's ``datasets`` list

Shards of one dataset are named ``episode_<e>_frame_<f>.safetensors``; with several datasets the name
starts with ``dataset_<d>_``, so the same episode index of two datasets never collides.

Shards are written to a temporary name and renamed, so a shard that exists is complete: recording
again into the same directory skips finished shards (resume after an interruption). The trainer only
sees ``token_batches``: an iterator of (batch, D) tensors, so bags or live capture can feed it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .distributed import merged_shards
from .errors import ConfigError, UsageError
from .layout import TokenLayout
from .outputs import prepare_output_dir

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from .pipeline import Frame

MANIFEST = "activations.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class RecordConfig:
    """How tokens are recorded.

    Args:
        batch_size: frames per engine forward (``Introspector.step_batch``).
        shard_frames: frames per shard; bounds memory (``shard_frames * S * D`` values at a time) and
            the work lost on an interruption.
        layer: encoder layer whose output tokens are recorded (-1: the last).
        dtype: storage type of the tokens: "float16" (default, half the disk), "bfloat16" or "float32".
        sampling: "all" keeps every token; "blocks" keeps the latent and state tokens and averages each
            camera's tokens over ``block`` x ``block`` spatial blocks (the seed's token sampling).
        block: block edge in tokens for ``sampling="blocks"``.
        device: torch device of the policy ("cpu", "cuda").
        model_dtype: dtype the policy runs in: "float32" (as saved), "bfloat16" or "float16".
        policy_overrides: policy config fields set before the policy is built (``policy.apply_overrides``).
    """

    batch_size: int = 16
    shard_frames: int = 256
    layer: int = -1
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    sampling: Literal["all", "blocks"] = "all"
    block: int = 2
    device: str = "cpu"
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    policy_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_frames < 1:
            raise ValueError(f"batch_size={self.batch_size} and shard_frames={self.shard_frames} must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.sampling not in ("all", "blocks"):
            raise ValueError(f"sampling={self.sampling!r} is not one of 'all', 'blocks'")
        if self.block < 1:
            raise ValueError(f"block={self.block} must be >= 1")
        if self.model_dtype not in DTYPES:
            raise ValueError(f"model_dtype={self.model_dtype!r} is not one of {sorted(DTYPES)}")


def sample_tokens(tokens: torch.Tensor, layout: TokenLayout, block: int) -> torch.Tensor:
    """(B, S, D) -> (B, S', D): non-camera tokens as they are, camera tokens averaged in spatial blocks."""
    keep = [tokens[:, : layout.cameras[0].start]] if layout.cameras else [tokens]
    for cam in layout.cameras:
        grid = tokens[:, cam.start : cam.stop].transpose(1, 2).reshape(tokens.shape[0], -1, cam.height, cam.width)
        pooled = torch.nn.functional.avg_pool2d(grid, block, block, ceil_mode=True)
        keep.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(keep, dim=1)


def shard_name(episode: int, start: int, dataset: int | None = None) -> str:
    """The shard of ``episode`` from frame ``start``; ``dataset``: its index when recording several datasets."""
    prefix = f"dataset_{dataset:02d}_" if dataset is not None else ""
    return f"{prefix}episode_{episode:06d}_frame_{start:06d}.safetensors"


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of a recording: a LeRobot repo id and its local root (None: the hub / HF cache)."""

    repo_id: str
    root: str | None = None


def _split_list(value: str | Sequence[str] | None) -> list[str]:
    """ "a,b", "[a, b]" (the seed's form), ["a", "b"] or ["a,b"] -> ["a", "b"]."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        text = item.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        out += [part.strip().strip("'\"") for part in text.split(",")]
    return out


def parse_datasets(repo_ids: str | Sequence[str], roots: str | Sequence[str] | None = None) -> list[DatasetRef]:
    """The datasets of ``--dataset-repo-id a,b --root r1,r2`` (or the seed's ``[a,b]``): one root for each repo
    id in the same order, or no root at all (every dataset from the hub / HF cache)."""
    ids, dirs = _split_list(repo_ids), _split_list(roots)
    if not ids or any(not i for i in ids):
        raise UsageError(f"--dataset-repo-id {repo_ids!r}: expected one repo id or a comma-separated list (a,b)")
    if dirs and len(dirs) != len(ids):
        raise UsageError(
            f"--root {roots!r} lists {len(dirs)} folders for {len(ids)} datasets {ids}; give one root per "
            "dataset, in the same order, separated by commas (or none)"
        )
    if any(not d for d in dirs):
        raise UsageError(f"--root {roots!r} has an empty entry; give one folder per dataset")
    roots_or_none: list[str | None] = list(dirs) if dirs else [None] * len(ids)
    refs = [DatasetRef(i, d or None) for i, d in zip(ids, roots_or_none)]
    seen = set()
    for ref in refs:
        key = (ref.repo_id, str(Path(ref.root).resolve()) if ref.root else None)
        if key in seen:
            raise UsageError(
                f"--dataset-repo-id: dataset {ref.repo_id!r}{f' at {ref.root}' if ref.root else ''} is listed twice"
            )
        seen.add(key)
    return refs


def open_datasets(repo_ids: str | Sequence[str], roots: str | Sequence[str] | None = None) -> list:
    """``parse_datasets`` and open each one (``sources.dataset.open_dataset``)."""
    from .sources.dataset import open_dataset

    return [open_dataset(ref.repo_id, ref.root) for ref in parse_datasets(repo_ids, roots)]


def _manifest(
    policy_path: str,
    datasets: Sequence,
    d_model: int,
    n_tokens: int,
    layout: TokenLayout,
    cfg: RecordConfig,
    fingerprint: str = "",
    episodes: Sequence[Sequence[int]] = (),
) -> dict:
    one = len(datasets) == 1
    return {
        "policy": str(policy_path),
        "policy_fingerprint": fingerprint,
        # one dataset: its id and root; several: the ids joined and no single root (``datasets`` lists them)
        "dataset": _dataset_key(datasets),
        "dataset_root": str(datasets[0].root) if one else "",
        "datasets": [
            {"repo_id": str(d.repo_id), "root": str(d.root), "episodes": list(map(int, eps))}
            for d, eps in zip(datasets, episodes or [[]] * len(datasets))
        ],
        "d_model": d_model,
        "tokens_per_frame": n_tokens,
        "layer": cfg.layer,
        "dtype": cfg.dtype,
        "sampling": cfg.sampling,
        "block": cfg.block,
        "shard_frames": cfg.shard_frames,
        "layout": {
            "state_index": layout.state_index,
            "env_state_index": layout.env_state_index,
            "cameras": {c.name: [c.start, c.height, c.width] for c in layout.cameras},
        },
    }


def _dataset_key(datasets: Sequence) -> str:
    return ",".join(str(d.repo_id) for d in datasets)


def _check_same_recording(out: Path, manifest: dict) -> None:
    """Refuse to mix recordings: compares the keys of ``manifest`` with the manifest on disk."""
    path = out / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    keys = ("policy", "dataset", "d_model", "tokens_per_frame", "layer", "dtype", "sampling", "block", "shard_frames")
    diff = {k: (old.get(k), manifest[k]) for k in keys if k in manifest and old.get(k) != manifest[k]}
    if diff:
        raise UsageError(
            f"{out} already holds a different recording "
            f"({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
            "choose another --output-dir or delete it"
        )


def record_activations(
    dataset: LeRobotDataset | Sequence[LeRobotDataset],
    policy_path: str,
    output_dir: str | Path,
    episodes: Sequence[int] | None = None,
    config: RecordConfig | None = None,
    progress: bool = True,
) -> dict:
    """Run the engine over ``episodes`` of ``dataset`` and write token shards to ``output_dir``.

    ``dataset`` may be a list of datasets (``open_datasets``): every episode of each is recorded into one
    recording, the union of their frames; ``episodes`` then must be None.

    Returns a summary: frames recorded now, frames skipped because their shard already existed, shards.
    """
    from .engine import IntrospectionConfig, Introspector
    from .preflight import check_dataset_for_policy
    from .replay.runner import EngineStepper, RunConfig, Segment, run_segments
    from .sources.dataset import episode_bounds, iter_episode, select_episodes

    cfg = config or RecordConfig()
    datasets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset]
    if not datasets:
        raise UsageError("record_activations needs at least one dataset")
    if len(datasets) > 1 and episodes:
        raise UsageError(
            f"--episodes {list(episodes)} selects episodes of one dataset; with {len(datasets)} datasets "
            "every episode of each is recorded (record a dataset alone to choose episodes)"
        )
    out = Path(output_dir)
    out = prepare_output_dir(out, "activation recording folder (--output-dir)")
    chosen = [select_episodes(ds, episodes) for ds in datasets]
    engine = Introspector.from_pretrained(
        str(policy_path),
        IntrospectionConfig(
            device=cfg.device,
            token_layer=cfg.layer,
            rollout=False,
            model_dtype=cfg.model_dtype,
            policy_overrides=cfg.policy_overrides,
        ),
    )
    for ds, eps in zip(datasets, chosen):
        check_dataset_for_policy(ds, engine, eps, str(policy_path))
    _check_same_recording(
        out,
        {
            "policy": str(policy_path),
            "dataset": _dataset_key(datasets),
            "layer": cfg.layer,
            "dtype": cfg.dtype,
            "sampling": cfg.sampling,
            "block": cfg.block,
            "shard_frames": cfg.shard_frames,
        },
    )
    multi = len(datasets) > 1
    plan: list[tuple[int, int, int, int]] = []  # (dataset, episode, first absolute index, last absolute index + 1)
    done_frames = 0
    for d, (ds, eps) in enumerate(zip(datasets, chosen)):
        for ep in eps:
            start, stop = episode_bounds(ds, ep)
            for s in range(start, stop, cfg.shard_frames):
                e = min(s + cfg.shard_frames, stop)
                if (out / shard_name(ep, s - start, d if multi else None)).is_file():
                    done_frames += e - s
                else:
                    plan.append((d, ep, s, e))
    total = done_frames + sum(e - s for _, _, s, e in plan)
    shards = _ShardSink(out, datasets, chosen, cfg, str(policy_path), engine.fingerprint, multi)

    def segment(d: int, ep: int, s: int, e: int) -> Segment:
        ep_start = episode_bounds(datasets[d], ep)[0]  # image and video datasets alike
        return Segment((d, ep, s, e), iter_episode(datasets[d], ep, s - ep_start, e - ep_start))

    segments = (segment(*shard) for shard in plan)
    run_config = RunConfig(cfg.batch_size, progress=progress, desc="record activations", rejected="raise")
    run_segments(segments, EngineStepper(engine), [shards], config=run_config, total=total - done_frames)
    recorded = shards.recorded
    if total == 0:
        raise UsageError(f"Nothing to record: episodes {episodes} of dataset {_dataset_key(datasets)!r} have no frames")
    return {
        "frames_recorded": recorded,
        "frames_skipped_existing": done_frames,
        "frames_total": total,
        "shards": len(list(out.glob("*.safetensors"))),
    }


class _ShardSink:
    """One shard per segment (``begin``/``end``: its (dataset, episode, first, last + 1) frames): the tokens of
    every batch, sampled and cast to the storage type, saved under a temporary name and renamed once whole.
    The manifest is written (or checked against the one on disk) after the first batch, which gives the
    token widths."""

    def __init__(
        self,
        out: Path,
        datasets: Sequence,
        chosen: Sequence[Sequence[int]],
        cfg: RecordConfig,
        policy_path: str,
        fingerprint: str,
        multi: bool,
    ):
        self.out, self.datasets, self.chosen, self.cfg = out, datasets, chosen, cfg
        self.policy_path, self.fingerprint, self.multi = policy_path, fingerprint, multi
        self.manifest: dict | None = None
        self.chunks: list[torch.Tensor] = []
        self.episodes: list[int] = []
        self.frames: list[int] = []
        self.recorded = 0

    def begin(self, key: tuple[int, int, int, int]) -> None:
        self.chunks, self.episodes, self.frames = [], [], []

    def write(self, frames: Sequence[Frame]) -> None:
        results = [f.result for f in frames]
        tokens = torch.stack([cast(torch.Tensor, r.tokens) for r in results])  # recorded at the token layer
        if self.cfg.sampling == "blocks":
            tokens = sample_tokens(tokens, results[0].layout, self.cfg.block)
        if self.manifest is None:
            self.manifest = _manifest(
                self.policy_path,
                self.datasets,
                tokens.shape[-1],
                tokens.shape[1],
                results[0].layout,
                self.cfg,
                self.fingerprint,
                self.chosen,
            )
            _check_same_recording(self.out, self.manifest)
            (self.out / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        self.chunks.append(tokens.to("cpu", DTYPES[self.cfg.dtype]))
        self.episodes += [f.observation.episode_index for f in frames]
        self.frames += [f.observation.frame_index for f in frames]

    def end(self, key: tuple[int, int, int, int]) -> None:
        from .sources.dataset import episode_bounds

        d, ep, s, e = key
        name = shard_name(ep, s - episode_bounds(self.datasets[d], ep)[0], d if self.multi else None)
        tmp = self.out / (name + ".tmp")
        save_file(
            {
                "tokens": torch.cat(self.chunks).contiguous(),
                "episode_index": torch.tensor(self.episodes, dtype=torch.int64),
                "frame_index": torch.tensor(self.frames, dtype=torch.int64),
                "dataset_index": torch.full((len(self.episodes),), d, dtype=torch.int64),
            },
            str(tmp),
        )
        os.replace(tmp, self.out / name)
        self.recorded += e - s

    def close(self) -> None:
        pass


class ActivationStore:
    """Read side of a recording: its manifest and shards, split by episode, streamed as token batches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise UsageError(
                f"{self.path} is not an activation recording: {MANIFEST} is missing "
                "(record one with `pai record-activations`)"
            )
        self.manifest: dict = json.loads(manifest.read_text())
        self.shards: list[Path] = merged_shards(self.path)  # its own, and every rank's part (distributed.py)
        if not self.shards:
            raise UsageError(f"Activation recording {self.path} has no shards (*.safetensors)")

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @staticmethod
    def shard_episode(shard: Path) -> int:
        """The shard's episode index within its dataset."""
        parts = shard.name.split("_")
        return int(parts[parts.index("episode") + 1])

    @staticmethod
    def shard_dataset(shard: Path) -> int:
        """The shard's dataset index (its position in the manifest's ``datasets``; 0 for one dataset)."""
        parts = shard.name.split("_")
        return int(parts[1]) if parts[0] == "dataset" else 0

    def shard_key(self, shard: Path) -> tuple[int, int]:
        """(dataset index, episode index): what identifies an episode in a recording of several datasets."""
        return self.shard_dataset(shard), self.shard_episode(shard)

    def episodes(self) -> list[tuple[int, int]] | list[int]:
        """The recorded episodes: indices for one dataset, (dataset, episode) keys for several."""
        if len({self.shard_dataset(s) for s in self.shards}) > 1:
            return sorted({self.shard_key(s) for s in self.shards})
        return sorted({self.shard_episode(s) for s in self.shards})

    def episode_labels(self, shards: Sequence[Path]) -> list:
        """The episodes of ``shards`` as the SAE's config records them: indices for a recording of one dataset,
        ``"<repo id>:<episode>"`` for several (an index alone would not say which dataset)."""
        names = [d.get("repo_id", str(i)) for i, d in enumerate(self.manifest.get("datasets", []))]
        if len(names) <= 1:
            return sorted({self.shard_episode(s) for s in shards})
        return [f"{names[d]}:{e}" for d, e in sorted({self.shard_key(s) for s in shards})]

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
        """(train shards, held-out shards): whole episodes are held out when there are two or more,
        else whole shards, so held-out tokens never come from frames the SAE trained on."""
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be within (0, 1) (--val-fraction)")
        rng = np.random.default_rng(seed)
        keys = sorted({self.shard_key(s) for s in self.shards})
        if len(keys) >= 2:
            n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
            held = {keys[i] for i in rng.choice(len(keys), n_val, replace=False).tolist()}
            return (
                [s for s in self.shards if self.shard_key(s) not in held],
                [s for s in self.shards if self.shard_key(s) in held],
            )
        if len(self.shards) >= 2:
            n_val = min(len(self.shards) - 1, max(1, round(val_fraction * len(self.shards))))
            held_idx = set(rng.choice(len(self.shards), n_val, replace=False).tolist())
            return (
                [s for i, s in enumerate(self.shards) if i not in held_idx],
                [s for i, s in enumerate(self.shards) if i in held_idx],
            )
        raise UsageError(
            f"Activation recording {self.path} has one shard of one episode; a held-out split needs "
            "two episodes (or a smaller shard_frames)"
        )

    def count_tokens(self, shards: Sequence[Path] | None = None) -> int:
        from safetensors import safe_open

        total = 0
        for shard in shards if shards is not None else self.shards:
            with safe_open(str(shard), "pt") as f:
                n, s, _ = f.get_slice("tokens").get_shape()
                total += n * s
        return total

    def load_tokens(self, shards: Sequence[Path] | None = None) -> torch.Tensor:
        """All tokens of ``shards`` as one (N, D) float32 tensor (for held-out sets that fit in memory)."""
        return torch.cat([read_shard(s)["tokens"].flatten(0, 1).float() for s in (shards or self.shards)])


def read_shard(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def token_batches(
    shards: Sequence[Path],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    buffer_shards: int = 8,
    repeat: bool = False,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world: int = 1,
) -> Iterator[torch.Tensor]:
    """Stream (batch_size, D) float32 token batches from shards with bounded memory.

    Shuffling is two-level: shard order per epoch, then tokens within a buffer of ``buffer_shards``
    shards. The stream is a deterministic function of ``seed``, so a resumed training run can replay it
    to the batch where it stopped. Without ``repeat`` the last partial batch is yielded too.

    With ``world > 1`` (data-parallel training, ``distributed.rank_batches``) only rows ``rank * b`` to
    ``(rank + 1) * b`` of every global batch are gathered, b = batch_size / world, and the final partial
    batch is shared out as evenly as it goes: the ranks together see exactly the batches one process sees.
    """
    if not shards:
        raise UsageError("token_batches needs at least one shard")
    if batch_size < 1 or batch_size % world:
        raise UsageError(f"batch_size={batch_size} must be a positive multiple of the {world} ranks")
    if not 0 <= rank < world:
        raise UsageError(f"rank={rank} must be within 0..{world - 1}")
    local = batch_size // world
    lo, hi = rank * local, (rank + 1) * local
    epoch = 0
    carry: torch.Tensor | None = None
    while True:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(shards)) if shuffle else np.arange(len(shards))
        for i in range(0, len(order), buffer_shards):
            parts = [read_shard(shards[j])["tokens"].flatten(0, 1) for j in order[i : i + buffer_shards]]
            if carry is not None:
                parts.insert(0, carry)
            buf = torch.cat(parts)
            rows = torch.from_numpy(rng.permutation(buf.shape[0])) if shuffle else torch.arange(buf.shape[0])
            n_full = buf.shape[0] // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield buf[rows[b + lo : b + hi]].to(device, torch.float32, non_blocking=True)
            carry = buf[rows[n_full:]] if n_full < buf.shape[0] else None
        epoch += 1
        if not repeat:
            if carry is not None:
                share = np.array_split(np.arange(carry.shape[0]), world)[rank]
                if len(share):
                    yield carry[torch.from_numpy(share)].to(device, torch.float32)
            return


__all__ = [
    "MANIFEST",
    "ActivationStore",
    "DatasetRef",
    "RecordConfig",
    "open_datasets",
    "parse_datasets",
    "read_shard",
    "record_activations",
    "sample_tokens",
    "shard_name",
    "token_batches",
]
