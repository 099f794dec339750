"""Encoder tokens of a LeRobot dataset on disk, for SAE training.

A recording is a directory of safetensors shards plus ``activations.json`` (policy, layer, widths,
sampling). Each shard holds one run of consecutive frames of one episode:

    tokens        (N, S, D)  encoder tokens of N frames (S tokens each, D = dim_model)
    episode_index (N,)       int64
    frame_index   (N,)       int64

Shards are written to a temporary name and renamed, so a shard that exists is complete: recording
again into the same directory skips finished shards (resume after an interruption). The trainer only
sees ``token_batches``: an iterator of (batch, D) tensors, so bags or live capture can feed it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import InputError
from .layout import TokenLayout
from .outputs import prepare_output_dir

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
    """

    batch_size: int = 16
    shard_frames: int = 256
    layer: int = -1
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    sampling: Literal["all", "blocks"] = "all"
    block: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_frames < 1:
            raise ValueError(f"batch_size={self.batch_size} and shard_frames={self.shard_frames} must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.sampling not in ("all", "blocks"):
            raise ValueError(f"sampling={self.sampling!r} is not one of 'all', 'blocks'")
        if self.block < 1:
            raise ValueError(f"block={self.block} must be >= 1")


def sample_tokens(tokens: torch.Tensor, layout: TokenLayout, block: int) -> torch.Tensor:
    """(B, S, D) -> (B, S', D): non-camera tokens as they are, camera tokens averaged in spatial blocks."""
    keep = [tokens[:, : layout.cameras[0].start]] if layout.cameras else [tokens]
    for cam in layout.cameras:
        grid = tokens[:, cam.start : cam.stop].transpose(1, 2).reshape(tokens.shape[0], -1, cam.height, cam.width)
        pooled = torch.nn.functional.avg_pool2d(grid, block, block, ceil_mode=True)
        keep.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(keep, dim=1)


def shard_name(episode: int, start: int) -> str:
    return f"episode_{episode:06d}_frame_{start:06d}.safetensors"


def _manifest(policy_path: str, dataset, d_model: int, n_tokens: int, layout: TokenLayout, cfg: RecordConfig,
              fingerprint: str = "") -> dict:
    return {
        "policy": str(policy_path),
        "policy_fingerprint": fingerprint,
        "dataset": str(dataset.repo_id),
        "dataset_root": str(dataset.root),
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


def _check_same_recording(out: Path, manifest: dict) -> None:
    """Refuse to mix recordings: compares the keys of ``manifest`` with the manifest on disk."""
    path = out / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    keys = ("policy", "dataset", "d_model", "tokens_per_frame", "layer", "dtype", "sampling", "block", "shard_frames")
    diff = {k: (old.get(k), manifest[k]) for k in keys if k in manifest and old.get(k) != manifest[k]}
    if diff:
        raise InputError(
            f"{out} already holds a different recording ({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
            "choose another --output-dir or delete it"
        )


def record_activations(
    dataset,
    policy_path: str,
    output_dir: str | Path,
    episodes: Sequence[int] | None = None,
    config: RecordConfig | None = None,
    progress: bool = True,
) -> dict:
    """Run the engine over ``episodes`` of ``dataset`` and write token shards to ``output_dir``.

    Returns a summary: frames recorded now, frames skipped because their shard already existed, shards.
    """
    from tqdm.auto import tqdm

    from .engine import IntrospectionConfig, Introspector
    from .preflight import check_dataset_for_policy
    from .sources.dataset import episode_bounds, iter_episode, select_episodes

    cfg = config or RecordConfig()
    out = Path(output_dir)
    out = prepare_output_dir(out, "activation recording folder (--output-dir)")
    episodes = select_episodes(dataset, episodes)
    engine = Introspector.from_pretrained(
        str(policy_path), IntrospectionConfig(device=cfg.device, token_layer=cfg.layer, rollout=False)
    )
    check_dataset_for_policy(dataset, engine, episodes, str(policy_path))
    _check_same_recording(out, {"policy": str(policy_path), "dataset": str(dataset.repo_id), "layer": cfg.layer,
                                "dtype": cfg.dtype, "sampling": cfg.sampling, "block": cfg.block,
                                "shard_frames": cfg.shard_frames})
    plan: list[tuple[int, int, int]] = []  # (episode, first absolute index, last absolute index + 1)
    done_frames = 0
    for ep in episodes:
        start, stop = episode_bounds(dataset, ep)
        for s in range(start, stop, cfg.shard_frames):
            e = min(s + cfg.shard_frames, stop)
            if (out / shard_name(ep, s - start)).is_file():
                done_frames += e - s
            else:
                plan.append((ep, s, e))
    total = done_frames + sum(e - s for _, s, e in plan)
    manifest: dict | None = None  # written (or checked against the one on disk) after the first batch
    bar = tqdm(total=total, initial=done_frames, unit="frame", desc="record activations", disable=not progress)
    recorded = 0
    for ep, s, e in plan:
        ep_start = episode_bounds(dataset, ep)[0]
        chunks, eps, frames = [], [], []
        shard = iter_episode(dataset, ep, s - ep_start, e - ep_start)  # image and video datasets alike
        while obs := list(islice(shard, cfg.batch_size)):
            results = engine.step_batch(obs)
            tokens = torch.stack([r.tokens for r in results])
            if cfg.sampling == "blocks":
                tokens = sample_tokens(tokens, results[0].layout, cfg.block)
            if manifest is None:
                manifest = _manifest(str(policy_path), dataset, tokens.shape[-1], tokens.shape[1], results[0].layout, cfg,
                                     engine.fingerprint)
                _check_same_recording(out, manifest)
                (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
            chunks.append(tokens.to("cpu", DTYPES[cfg.dtype]))
            eps += [o.episode_index for o in obs]
            frames += [o.frame_index for o in obs]
            bar.update(len(obs))
        tmp = out / (shard_name(ep, s - ep_start) + ".tmp")
        save_file(
            {
                "tokens": torch.cat(chunks).contiguous(),
                "episode_index": torch.tensor(eps, dtype=torch.int64),
                "frame_index": torch.tensor(frames, dtype=torch.int64),
            },
            str(tmp),
        )
        os.replace(tmp, out / shard_name(ep, s - ep_start))
        recorded += e - s
    bar.close()
    if total == 0:
        raise InputError(f"Nothing to record: episodes {episodes} of dataset {dataset.repo_id!r} have no frames")
    return {"frames_recorded": recorded, "frames_skipped_existing": done_frames, "frames_total": total,
            "shards": len(list(out.glob("*.safetensors")))}


class ActivationStore:
    """Read side of a recording: its manifest and shards, split by episode, streamed as token batches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{self.path} is not an activation recording: {MANIFEST} is missing "
                             "(record one with `pai record-activations`)")
        self.manifest: dict = json.loads(manifest.read_text())
        self.shards: list[Path] = sorted(self.path.glob("*.safetensors"))
        if not self.shards:
            raise InputError(f"Activation recording {self.path} has no shards (*.safetensors)")

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @staticmethod
    def shard_episode(shard: Path) -> int:
        return int(shard.name.split("_")[1])

    def episodes(self) -> list[int]:
        return sorted({self.shard_episode(s) for s in self.shards})

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
        """(train shards, held-out shards): whole episodes are held out when there are two or more,
        else whole shards, so held-out tokens never come from frames the SAE trained on."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be within (0, 1)")
        rng = np.random.default_rng(seed)
        episodes = self.episodes()
        if len(episodes) >= 2:
            n_val = min(len(episodes) - 1, max(1, round(val_fraction * len(episodes))))
            held = set(rng.choice(episodes, n_val, replace=False).tolist())
            return ([s for s in self.shards if self.shard_episode(s) not in held],
                    [s for s in self.shards if self.shard_episode(s) in held])
        if len(self.shards) >= 2:
            n_val = min(len(self.shards) - 1, max(1, round(val_fraction * len(self.shards))))
            held_idx = set(rng.choice(len(self.shards), n_val, replace=False).tolist())
            return ([s for i, s in enumerate(self.shards) if i not in held_idx],
                    [s for i, s in enumerate(self.shards) if i in held_idx])
        raise InputError(f"Activation recording {self.path} has one shard of one episode; a held-out split needs "
                         "two episodes (or a smaller shard_frames)")

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
) -> Iterator[torch.Tensor]:
    """Stream (batch_size, D) float32 token batches from shards with bounded memory.

    Shuffling is two-level: shard order per epoch, then tokens within a buffer of ``buffer_shards``
    shards. The stream is a deterministic function of ``seed``, so a resumed training run can replay it
    to the batch where it stopped. Without ``repeat`` the last partial batch is yielded too.
    """
    if not shards:
        raise InputError("token_batches needs at least one shard")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
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
            if shuffle:
                buf = buf[torch.from_numpy(rng.permutation(buf.shape[0]))]
            n_full = buf.shape[0] // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield buf[b : b + batch_size].to(device, torch.float32, non_blocking=True)
            carry = buf[n_full:] if n_full < buf.shape[0] else None
        epoch += 1
        if not repeat:
            if carry is not None:
                yield carry.to(device, torch.float32)
            return


__all__ = [
    "ActivationStore", "MANIFEST", "RecordConfig", "read_shard", "record_activations", "sample_tokens",
    "shard_name", "token_batches",
]
