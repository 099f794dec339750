"""Scale-out with torch.distributed, launched by ``torchrun`` (the launcher LeRobot trains with):
activation recording split across ranks, and SAE training data-parallel.

    torchrun --nproc-per-node 8 -m pai_core.distributed record-activations --dataset-repo-id ID \\
        --policy-path POLICY --output-dir ACTS --device cuda
    torchrun --nproc-per-node 8 -m pai_core.distributed train-sae --activations ACTS --output-dir SAE \\
        --batch-size 32768 --device cuda

Recording: the episodes are dealt to the ranks (balanced by frames); rank r records its episodes into
``ACTS/rank_0000r/``, a complete recording of its own (manifest, shards, resumable), then rank 0 writes
``ACTS/activations.json`` naming the parts. ``ActivationStore`` reads every part's shards as one recording,
ordered by shard name as a one-process recording is (``merged_shards``), so the same frames give the
same tokens and the same training stream whatever the number of ranks.

Training: every rank follows the deterministic stream of global batches one process would read
(``token_batches``) and gathers only its slice of each (``rank_batches``). Gradients are averaged over
the ranks as each parameter's gradient is accumulated (what DDP does), rescaled so that the FVU is the
global batch's, the pre-encoder bias starts at the global mean, and the dead-latent counters are merged
after every step (``SAEDataParallel``): all ranks hold the same SAE, which follows one process's training up
to AuxK's per-slice normaliser and summation order. Rank 0 writes the SAE folder.

On one machine without GPUs the same code runs with the ``gloo`` backend (what the tests do).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, get_args

import torch

from .errors import InputError, UsageError

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from .activations import RecordConfig
    from .sae.model import SparseAutoencoder
    from .sae.train import TrainConfig, TrainResult

#: ``sae.train.training_step``: (sae, optimizer, x, aux_coef) -> detached statistics
TrainingStep = Callable[["SparseAutoencoder", torch.optim.Optimizer, torch.Tensor, float], dict[str, torch.Tensor]]

log = logging.getLogger(__name__)

Backend = Literal["auto", "gloo", "nccl"]
BACKENDS: tuple[str, ...] = get_args(Backend)
MANIFEST = "activations.json"  # as pai_core.activations.MANIFEST (not imported: activations imports us)
PART = "rank_{:05d}"


# ---------------------------------------------------------------------------------------------- ranks
@dataclass(frozen=True)
class Ranks:
    """This process's place in the job. ``world == 1`` without torchrun (no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """``requested`` for this rank: "cuda" becomes this rank's GPU ("cuda:LOCAL_RANK")."""
        return f"cuda:{self.local_rank}" if requested == "cuda" and self.world > 1 else requested


def init_ranks(backend: str = "auto") -> Ranks:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR ...)
    or, outside torchrun, return the single-process ``Ranks()``. "auto" is nccl with CUDA, else gloo."""
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r} is not one of {list(BACKENDS)}")
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------- recording
def split_episodes(frames: dict[int, int], world: int) -> list[list[int]]:
    """Deal episodes (id -> frame count) to ``world`` ranks, longest first to the least-loaded rank, so the
    ranks finish together. Deterministic; each rank's episodes sorted."""
    load = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    for ep in sorted(frames, key=lambda e: (-frames[e], e)):
        r = min(range(world), key=lambda i: (load[i], i))
        parts[r].append(ep)
        load[r] += frames[ep]
    return [sorted(p) for p in parts]


def record_ranked(
    dataset: LeRobotDataset,
    policy_path: str,
    output_dir: str | Path,
    episodes: Sequence[int] | None = None,
    config: RecordConfig | None = None,
    ranks: Ranks = Ranks(),
    progress: bool = True,
) -> dict:
    """``record_activations`` split across ranks: this rank records its share of ``episodes`` into
    ``output_dir/rank_RRRRR``; after a barrier rank 0 writes the top-level manifest naming every part.
    Returns the job's summary (frames recorded over all ranks)."""
    from .activations import record_activations
    from .outputs import prepare_output_dir
    from .sources.dataset import episode_bounds, select_episodes

    out = prepare_output_dir(Path(output_dir), "activation recording folder (--output-dir)")
    top = out / MANIFEST
    if top.is_file():
        old = json.loads(top.read_text())
        if "parts" not in old:
            raise UsageError(
                f"{out} holds a one-process recording (pai record-activations); record the ranked "
                "one into another --output-dir"
            )
        if len(old["parts"]) != ranks.world:
            raise UsageError(
                f"{out} was recorded by {len(old['parts'])} ranks, this job has {ranks.world}; resume "
                "with the same number of ranks or choose another --output-dir"
            )
    episodes = select_episodes(dataset, episodes)
    bounds = {ep: episode_bounds(dataset, ep) for ep in episodes}
    frames = {ep: stop - start for ep, (start, stop) in bounds.items()}
    mine = split_episodes(frames, ranks.world)[ranks.rank]
    summary = {"frames_recorded": 0, "frames_skipped_existing": 0, "frames_total": 0}
    if mine:
        done = record_activations(
            dataset, policy_path, out / PART.format(ranks.rank), mine, config, progress=progress and ranks.is_main
        )
        summary = {k: done[k] for k in summary}
    summaries = _gather(summary, ranks)
    if ranks.is_main:
        _write_parts_manifest(out, ranks.world)
    barrier(ranks)
    total = {k: sum(s[k] for s in summaries) for k in summary}
    return {**total, "ranks": ranks.world, "shards": len(merged_shards(out))}


def _gather(obj: object, ranks: Ranks) -> list:
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[object] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def _write_parts_manifest(out: Path, world: int) -> None:
    """The top-level manifest: the parts' common manifest plus ``parts``. Parts must agree on what the
    tokens are (policy, layer, widths, sampling)."""
    parts = [PART.format(r) for r in range(world)]
    manifests = {p: json.loads((out / p / MANIFEST).read_text()) for p in parts if (out / p / MANIFEST).is_file()}
    if not manifests:
        raise UsageError(f"No rank recorded anything into {out}")
    first_name, first = next(iter(manifests.items()))
    keys = (
        "policy",
        "policy_fingerprint",
        "dataset",
        "d_model",
        "tokens_per_frame",
        "layer",
        "dtype",
        "sampling",
        "block",
        "layout",
    )
    for name, m in manifests.items():
        diff = [k for k in keys if m.get(k) != first.get(k)]
        if diff:
            raise UsageError(f"Parts {first_name} and {name} of {out} disagree on {diff}")
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**first, "parts": parts}, indent=2))
    os.replace(tmp, out / MANIFEST)


def merged_shards(path: str | Path) -> list[Path]:
    """The shards of a recording: its own and, for a ranked recording, every part's, ordered by shard name
    (episode, first frame) as one process would have written them. A shard name in two parts is an error."""
    path = Path(path)
    shards = list(path.glob("*.safetensors"))
    manifest = path / MANIFEST
    parts = json.loads(manifest.read_text()).get("parts", []) if manifest.is_file() else []
    for part in parts:
        shards += (path / part).glob("*.safetensors")
    seen: dict[str, Path] = {}
    for shard in shards:
        if shard.name in seen:
            raise UsageError(
                f"Recording {path} has shard {shard.name} twice ({seen[shard.name]} and {shard}); "
                "delete one part and record it again"
            )
        seen[shard.name] = shard
    return sorted(shards, key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------- training
def rank_batches(
    shards: Sequence[Path],
    batch_size: int,
    ranks: Ranks,
    shuffle: bool = True,
    seed: int = 0,
    buffer_shards: int = 8,
    repeat: bool = False,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """This rank's slice of every global batch of ``token_batches(shards, batch_size, shuffle, seed,
    buffer_shards, repeat)``: rows ``rank * b`` to ``(rank + 1) * b`` of each, b = batch_size / world, so the
    ranks together train on exactly the batches one process would. Only this rank's rows are gathered.
    The final partial batch (without ``repeat``) is shared out as evenly as it goes.

    Yields (batch_size / world, D) float32 tensors on ``device``."""
    from .activations import token_batches

    return token_batches(shards, batch_size, shuffle, seed, buffer_shards, repeat, device, ranks.rank, ranks.world)


class SAEDataParallel:
    """``train_sae``'s ``parallel`` hook: every rank trains on its slice of the global batch and all ranks
    keep the same SAE, which follows one process's training on the global batch.

    ``prepare`` averages the parameters over the ranks once (the same seed made them equal; the pre-encoder
    bias, set from each rank's slices of the first batches, becomes the global mean) and registers a hook
    that averages each parameter's gradient as soon as it is accumulated. ``step`` runs one training step:

    - the main loss is an FVU, normalised by the batch's variance; a rank only sees its slice, so its
      gradient is scaled by (slice variance / global batch variance) before averaging, which makes the
      averaged FVU gradient the global batch's exactly (one all-reduce of D + 1 sums);
    - the dead-latent counters are merged: a latent fired if it fired on any rank, else every rank's tokens
      count, so AuxK sees the same dead latents on every rank and as one process would.

    - the usage floor's counts are summed, so every rank takes the step one process would take.

    What remains different from one process: AuxK's normaliser (the residual's norm) is the slice's, and
    floating-point summation order."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._handles: list = []
        self._scale: torch.Tensor | None = None

    def prepare(self, sae: SparseAutoencoder) -> None:
        import torch.distributed as dist

        if self.ranks.world == 1:
            return
        with torch.no_grad():
            for p in sae.parameters():
                dist.all_reduce(p.data)
                p.data.div_(self.ranks.world)
        self._handles = [p.register_post_accumulate_grad_hook(self._average) for p in sae.parameters()]

    def _average(self, param: torch.Tensor) -> None:
        import torch.distributed as dist

        grad = param.grad
        if grad is None:  # a post-accumulate hook runs once the gradient is there
            return
        if self._scale is not None:
            grad.mul_(self._scale)
        dist.all_reduce(grad)
        grad.div_(self.ranks.world)

    @torch.no_grad()
    def variance_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) slice -> its variance (as ``normalized_mse`` computes it) over the global batch's, where
        the global batch is every rank's slice (equal sizes). Sums in float64: tokens have a large mean."""
        import torch.distributed as dist

        local = (x - x.mean(0, keepdim=True)).pow(2).sum(-1).mean()
        sums = torch.cat([x.double().sum(0), x.double().pow(2).sum().reshape(1)])
        dist.all_reduce(sums)
        n = x.shape[0] * self.ranks.world
        total = sums[-1] / n - (sums[:-1] / n).pow(2).sum()
        return (local.double() / total.clamp_min(1e-12)).to(x.dtype)

    def step(
        self,
        training_step: TrainingStep,
        sae: SparseAutoencoder,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        aux_coef: float,
    ) -> dict:
        """``training_step(sae, optimizer, x, aux_coef)`` on this rank's slice ``x``, kept in step with the
        other ranks; returns its (per-rank) statistics."""
        from .sae.train import USAGE

        if self.ranks.world == 1:
            return training_step(sae, optimizer, x, aux_coef)
        self._scale = self.variance_scale(x)
        stats = training_step(sae, optimizer, x, aux_coef)
        self._scale = None
        self.merge_counters(sae, x.shape[0])
        if USAGE in stats:  # the usage floor's counts of the global batch: one process's step on every rank
            import torch.distributed as dist

            dist.all_reduce(stats[USAGE])
        return stats

    @torch.no_grad()
    def merge_counters(self, sae: SparseAutoencoder, local_tokens: int) -> None:
        """``tokens_since_fired`` as one process training on the global batch would have it."""
        import torch.distributed as dist

        since = sae.tokens_since_fired
        low = since.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)  # 0 where some rank saw the latent fire
        since.copy_(torch.where(low == 0, low, low + (self.ranks.world - 1) * local_tokens))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def train_on_recording(
    activations: str | Path,
    output_dir: str | Path,
    config: TrainConfig,
    ranks: Ranks = Ranks(),
    val_fraction: float = 0.2,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult | None:
    """Train an SAE on a recording: ``pai train-sae``'s work, in one process (``Ranks()``, the default) or with
    every rank of a torchrun job (``train_sae`` with ``SAEDataParallel``). ``config.batch_size`` is the global
    batch; the held-out episodes are ``val_fraction`` of the recording's. Rank 0 writes ``output_dir`` (tokens/s
    over all ranks); the others train in a scratch folder that is removed. Returns rank 0's ``TrainResult``
    (None elsewhere)."""
    from .activations import ActivationStore, token_batches
    from .sae.io import save_sae
    from .sae.train import CHECKPOINT, model_card, train_sae

    if config.batch_size % ranks.world:
        raise UsageError(f"--batch-size {config.batch_size} must be a multiple of the {ranks.world} ranks")
    out = Path(output_dir)
    if (out / CHECKPOINT).is_file() and not resume:  # checked on every rank, so all stop together
        raise UsageError(
            f"{out} holds a checkpoint of an earlier run; pass --resume to continue it or choose another --output-dir"
        )
    store = ActivationStore(activations)
    train, held = store.split(val_fraction, config.seed)
    m = store.manifest
    extra = {
        "activations": str(Path(activations).resolve()),
        "dataset": m.get("dataset"),
        "dataset_root": m.get("dataset_root"),
        "train_episodes": store.episode_labels(train),  # "repo:episode" for several datasets
        "held_out_episodes": store.episode_labels(held),
        "datasets": m.get("datasets", []),
        "tokens_per_frame": m.get("tokens_per_frame"),
        "sampling": m.get("sampling"),
        "dtype": m.get("dtype"),
        "policy_fingerprint": m.get("policy_fingerprint", ""),
        "ranks": ranks.world,
    }
    log.info("training on %d tokens, %d held out", store.count_tokens(train), store.count_tokens(held))
    scratch = None if ranks.is_main else Path(tempfile.mkdtemp(prefix=f"pai-sae-rank{ranks.rank}-"))
    target = out if scratch is None else scratch / "sae"
    if scratch is not None and resume and (out / CHECKPOINT).is_file():
        target.mkdir(parents=True)
        shutil.copy2(out / CHECKPOINT, target / CHECKPOINT)  # every rank resumes from rank 0's checkpoint
    device = config.device
    parallel = SAEDataParallel(ranks)
    try:
        result = train_sae(
            rank_batches(train, config.batch_size, ranks, seed=config.seed, repeat=True, device=device),
            store.d_model,
            target,
            config,
            held_out=(lambda: token_batches(held, 8192, shuffle=False, device=device)) if ranks.is_main else None,
            resume=resume,
            policy=str(m.get("policy", "")),
            extra=extra,
            progress=progress and ranks.is_main,
            parallel=parallel,
        )
    finally:
        parallel.remove_hooks()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    barrier(ranks)
    if not ranks.is_main:
        return None
    metrics = result.metrics
    if metrics.get("tokens_per_s"):
        metrics["tokens_per_s"] *= ranks.world  # steps are in lockstep: rank 0's rate times the ranks
    metrics["ranks"] = ranks.world
    save_sae(result.sae, out, metrics)
    (out / "README.md").write_text(model_card(result.sae.config, metrics))
    return result


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pai_core.distributed {record-activations,train-sae} ...`` under torchrun: the flags of
    ``pai record-activations`` and ``pai train-sae``, plus --backend."""
    from .commands import record_activations as record_cmd
    from .commands import train_sae as train_cmd

    parser = argparse.ArgumentParser(
        prog="torchrun ... -m pai_core.distributed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for p in (record_cmd.register(sub), train_cmd.register(sub)):
        p.add_argument("--backend", default="auto", choices=BACKENDS, help="torch.distributed backend")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ranks = init_ranks(args.backend)
        args.device = ranks.device(args.device)
        summary = _run(args, ranks, train_cmd)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if ranks.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def _run(args: argparse.Namespace, ranks: Ranks, train_cmd: ModuleType) -> dict:
    from .commands import args as flags
    from .sources.dataset import open_dataset

    if "," in (args.dataset_repo_id or "") or "[" in (args.dataset_repo_id or ""):
        raise UsageError(
            f"--dataset-repo-id {args.dataset_repo_id!r}: a ranked recording takes one dataset; record "
            "each dataset into its own --output-dir"
        )
    if args.command == "record-activations":
        dataset = open_dataset(args.dataset_repo_id, args.root)
        return record_ranked(
            dataset, args.policy_path, args.output_dir, args.episodes, flags.record_config(args), ranks
        )
    from .activations import ActivationStore

    if args.upload_to_hub:
        raise UsageError("--upload-to-hub is not supported under torchrun; publish the SAE with `pai push` afterwards")
    if bool(args.activations) == bool(args.dataset_repo_id):
        raise UsageError("give either --activations DIR or --dataset-repo-id (with --policy-path) to record first")
    acts = Path(args.activations) if args.activations else Path(args.output_dir) / "activations"
    if args.dataset_repo_id:
        if not args.policy_path:
            raise UsageError("--dataset-repo-id needs --policy-path: the policy whose tokens are recorded")
        record_ranked(
            open_dataset(args.dataset_repo_id, args.root),
            args.policy_path,
            acts,
            args.episodes,
            flags.record_config(args),
            ranks,
        )
    cfg = train_cmd.train_config(args, ActivationStore(acts))
    result = train_on_recording(acts, args.output_dir, cfg, ranks, args.val_fraction, args.resume)
    if result is None:
        return {}
    return {
        "output_dir": str(args.output_dir),
        **result.metrics.get("held_out", {}),
        "tokens_per_s": result.metrics["tokens_per_s"],
        "ranks": ranks.world,
    }


__all__ = [
    "BACKENDS",
    "Ranks",
    "SAEDataParallel",
    "barrier",
    "init_ranks",
    "merged_shards",
    "rank_batches",
    "record_ranked",
    "split_episodes",
    "train_on_recording",
]

if __name__ == "__main__":
    sys.exit(main())
