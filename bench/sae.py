#!/usr/bin/env python
"""Our per-token TopK SAE against the seed's whole-frame SAE, trained on the same recorded ACT tokens.

Ours is trained by ``train_sae`` (what ``pai train-sae`` runs); the seed's ``MultiModalSAE``
(``physical-ai-interpretability`` 0.1.4, loaded by ``bench/seed.py``) is trained on the same training
frames with its own defaults (``seed.SAE_TRAINING``: batches of 128 frames, Adam at 1e-4 with weight decay,
MSE + 0.3 L1, gradient norm clipped at 1, 20 epochs). Both are held out on the same episodes
(``ActivationStore.split``, as train-sae splits them).

The two trainings are interleaved: after every chunk of our steps the seed trains a slice of its schedule,
so both sides see the same machine load; each side's tokens/s is the median over its chunks. Memory is
the training state (parameters, gradients and Adam's two moments), and the CUDA peak per side on a GPU.
Quality on the held-out tokens: FVU (squared error over the tokens' total variance), and dead latents:
the fraction that never fire (value > 0) over the held-out window of N tokens, the same window over which
the training dead fraction counts latents that stayed silent for the last N training tokens.

    python bench/sae.py --activations outputs/demo/sae/activations --preset demo   # the demo's SAE and tokens
    python bench/sae.py                       # a random-init ACT's tokens over a synthetic dataset (minutes)
    python bench/sae.py --device cuda --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {  # pai_core/sim/demo.py's train-sae stage
    "demo": {"expansion_factor": 8, "k": 16, "aux_k": 64, "steps": 1500, "batch_size": 1024},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--activations", default=None, help="a recording (pai record-activations) to train on")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="demo: the demo's train-sae settings")
    parser.add_argument("--dim-model", type=int, default=512, help="synthetic recording: the random ACT's width")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--aux-k", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="default: 30 on CPU, 2000 on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="tokens per step; default 1024 CPU, 4096 CUDA")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-usage", type=float, default=None, help="usage floor (default: TrainConfig's)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of episodes held out (train-sae's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=30, help="interleaved chunks of each side's training")
    parser.add_argument("--seed-epochs", type=int, default=None, help="the seed's epochs (default: its 20)")
    parser.add_argument("--no-seed", action="store_true", help="train ours only")
    args = parser.parse_args()
    for name, value in PRESETS.get(args.preset, {}).items():
        if name not in ("steps", "batch_size") or getattr(args, name) is None:
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    on_cpu = not args.device.startswith("cuda")
    args.steps = args.steps or (30 if on_cpu else 2000)
    args.batch_size = args.batch_size or (1024 if on_cpu else 4096)

    from pai_core.activations import ActivationStore

    acts = Path(args.activations) if args.activations else record_synthetic(args)
    store = ActivationStore(acts)
    train, held = store.split(args.val_fraction, args.seed)
    tokens = {"train": store.count_tokens(train), "held_out": store.count_tokens(held)}
    seed_side = None if args.no_seed else SeedSide(store, train, args)
    ours = train_ours(args, store, train, held, seed_side)
    report = {
        "device": torch.cuda.get_device_name() if not on_cpu else f"cpu x{args.threads} threads",
        "activations": str(acts),
        "tokens": tokens | {"d_model": store.d_model, "per_frame": store.manifest["tokens_per_frame"]},
        "ours": ours,
    }
    if seed_side is not None:
        seed = seed_side.finish(store.load_tokens(held).view(-1, seed_side.n_tokens, store.d_model))
        report["seed_whole_frame"] = seed
        report["ratios_ours_over_seed"] = {
            "train_tokens_per_s": ratio(ours["train_tokens_per_s"], seed["train_tokens_per_s"]),
            "training_state_bytes": ratio(ours["training_state_bytes"], seed["training_state_bytes"]),
            "held_out_fvu": ratio(ours["held_out_fvu"], seed["held_out_fvu"]),
            "held_out_dead_fraction": ratio(ours["held_out_dead_fraction"], seed["held_out_dead_fraction"]),
            "held_out_dead_fraction_difference": round(
                ours["held_out_dead_fraction"] - seed["held_out_dead_fraction"], 4
            ),  # the ratio is undefined when the seed has none
            **(
                {"cuda_peak_bytes": ratio(ours["cuda_peak_bytes"], seed["cuda_peak_bytes"])}
                if "cuda_peak_bytes" in ours
                else {}
            ),
        }
    print(json.dumps(report, indent=2))


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def record_synthetic(args: argparse.Namespace) -> Path:
    """Tokens of a random-init ACT (dim_model 512, 4 encoder layers, one 240x320 camera: 82 tokens per frame)
    over a synthetic LeRobot dataset: a pipeline and throughput check (a trained policy's tokens differ)."""
    from pai_core.activations import RecordConfig, record_activations
    from pai_core.testing import make_act_policy, make_lerobot_dataset

    work = Path(tempfile.mkdtemp(prefix="pai-bench-sae-"))
    cams = {"observation.images.front": (args.height, args.width)}
    ds = make_lerobot_dataset(work / "ds", cameras=cams, episodes=args.episodes, frames=args.frames)
    policy = make_act_policy(
        work / "policy", cameras=cams, dim_model=args.dim_model, n_heads=8, dim_feedforward=3200, n_encoder_layers=4
    )
    t0 = time.perf_counter()
    record_activations(
        ds, str(policy), work / "acts", config=RecordConfig(batch_size=16, shard_frames=50, device=args.device)
    )
    print(f"recording: {args.episodes * args.frames / (time.perf_counter() - t0):.1f} frames/s", file=sys.stderr)
    return work / "acts"


def training_state_bytes(module: torch.nn.Module) -> int:
    """Parameters + gradients + Adam's two moments: what one training step holds besides activations."""
    return 4 * sum(p.numel() * p.element_size() for p in module.parameters())


def cuda_peak(device: str) -> Callable[[], int | None]:
    """Starts a CUDA peak-memory window; the returned function reads it (None on the CPU)."""
    if not device.startswith("cuda"):
        return lambda: None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return lambda: (torch.cuda.synchronize(), torch.cuda.max_memory_allocated())[1]


def interleaved(
    batches: Iterator[torch.Tensor], every: int, other: Callable[[], None], device: str, times: list, peaks: list
) -> Iterator[torch.Tensor]:
    """Yields ``batches``; after every ``every`` batches the consumer has trained on, records the chunk's
    seconds (and CUDA peak) and runs ``other`` (the seed's slice), outside our timed chunk."""
    n = 0
    peak = cuda_peak(device)
    start = time.perf_counter()
    for x in batches:
        yield x
        n += 1
        if n % every == 0:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            peaks.append(peak())
            other()
            peak = cuda_peak(device)
            start = time.perf_counter()


def train_ours(args: argparse.Namespace, store, train: list, held: list, seed_side: SeedSide | None) -> dict:
    from pai_core.activations import token_batches
    from pai_core.sae import TrainConfig, train_sae

    overrides = {} if args.min_usage is None else {"min_usage": args.min_usage}
    cfg = TrainConfig(
        expansion_factor=args.expansion_factor,
        k=args.k,
        aux_k=args.aux_k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=0,
        seed=args.seed,
        device=args.device,
        **overrides,
    )
    every = max(1, args.steps // args.chunks)
    times: list[float] = []
    peaks: list[int | None] = []
    if seed_side is not None:
        seed_side.slices_left = math.ceil(args.steps / every)
    other = (lambda: None) if seed_side is None else seed_side.train_slice
    stream = token_batches(train, args.batch_size, seed=args.seed, repeat=True, device=args.device)
    # the first chunk also holds the init batches train_sae reads for b_pre
    sae_dir = Path(tempfile.mkdtemp(prefix="pai-bench-sae-ours-"))
    result = train_sae(
        interleaved(stream, every, other, args.device, times, peaks),
        store.d_model,
        sae_dir,
        cfg,
        held_out=lambda: token_batches(held, 8192, shuffle=False, device=args.device),
        progress=False,
    )
    if seed_side is not None:
        seed_side.train_slice(rest=True)  # whatever is left of the seed's schedule
    held_metrics, dead = result.metrics["held_out"], result.metrics["dead_latents"]
    out = {
        "sae": f"per-token TopK {store.d_model} -> {store.d_model * args.expansion_factor}, k {args.k}",
        "sae_dir": str(sae_dir),  # weights, metrics.json and the README.md model card
        "config": {
            "k": args.k,
            "aux_k": args.aux_k,
            "min_usage": cfg.min_usage,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "auxk_window_tokens": dead["auxk_window_tokens"],
        },
        "tokens_trained": args.steps * args.batch_size,
        "train_tokens_per_s": round(statistics.median(every * args.batch_size / t for t in times)) if times else None,
        "chunks_timed": len(times),
        "training_state_bytes": training_state_bytes(result.sae),
        "held_out_fvu": round(held_metrics["fvu"], 5),
        "held_out_mean_l0_per_token": held_metrics["mean_l0"],
        "dead_window_tokens": dead["window_tokens"],
        "held_out_dead_fraction": round(dead["held_out"], 4),
        "training_dead_fraction": round(dead["training"], 4),
        "auxk_active_steps": dead["auxk_active_steps"],
    }
    if any(p is not None for p in peaks):
        out["cuda_peak_bytes"] = statistics.median(p for p in peaks if p is not None)
    return out


class SeedSide:
    """The seed's whole-frame SAE and its training schedule, run a slice at a time."""

    def __init__(self, store, train: list, args: argparse.Namespace):
        from bench import seed

        self.cfg = dict(seed.SAE_TRAINING)
        if args.seed_epochs is not None:
            self.cfg["num_epochs"] = args.seed_epochs
        self.device = args.device
        self.n_tokens, d = int(store.manifest["tokens_per_frame"]), store.d_model
        self.frames = store.load_tokens(train).view(-1, self.n_tokens, d)  # (frames, tokens, d): whole frames
        torch.manual_seed(args.seed)
        self.model = seed.whole_frame_sae(self.n_tokens, d, device=args.device)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=self.cfg["learning_rate"], weight_decay=self.cfg["weight_decay"]
        )
        self.batches = self._schedule(args.seed)
        per_epoch = math.ceil(len(self.frames) / self.cfg["batch_size"])
        self.total_steps, self.done, self.slices_left = per_epoch * self.cfg["num_epochs"], 0, 1
        self.times: list[tuple[float, int]] = []
        self.peaks: list[int | None] = []

    def _schedule(self, seed: int) -> Iterator[torch.Tensor]:
        """Shuffled batches of whole frames, epoch after epoch (the seed's DataLoader with shuffle=True)."""
        g = torch.Generator().manual_seed(seed)
        for _ in range(self.cfg["num_epochs"]):
            for idx in torch.randperm(len(self.frames), generator=g).split(self.cfg["batch_size"]):
                yield self.frames[idx].to(self.device)

    def train_slice(self, rest: bool = False) -> None:
        """An equal share of the seed's remaining steps over ``slices_left`` slices (``rest``: all of them)."""
        n = None if rest else math.ceil((self.total_steps - self.done) / max(1, self.slices_left))
        self.slices_left -= 1
        peak = cuda_peak(self.device)
        start, tokens = time.perf_counter(), 0
        for x in self.batches if n is None else (b for _, b in zip(range(n), self.batches)):
            loss = self.model.compute_loss(x, l1_penalty=self.cfg["l1_penalty"])["total_loss"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["gradient_clip_norm"])
            self.opt.step()
            tokens += x.shape[0] * self.n_tokens
            self.done += 1
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        if tokens:
            self.times.append((time.perf_counter() - start, tokens))
            self.peaks.append(peak())

    @torch.no_grad()
    def finish(self, held: torch.Tensor) -> dict:
        """Held-out FVU over tokens (as ours), dead features over the whole held-out window, L0 per frame."""
        self.model.eval()
        err = active = 0.0
        fired = None
        for x in held.split(256):
            x = x.to(self.device)
            recon, features = self.model(x)
            err += float((recon.float() - x).double().pow(2).sum())
            on = features > 0
            active += float(on.sum())
            fired = on.any(0) if fired is None else fired | on.any(0)
        flat = held.flatten(0, 1).double()
        total_var = float((flat - flat.mean(0)).pow(2).sum())
        assert fired is not None
        out = {
            "sae": f"whole-frame {self.n_tokens} x {held.shape[-1]} -> {self.model.feature_dim} (LeakyReLU 0.1, L1)",
            "config": self.cfg,
            "steps": self.done,
            "tokens_trained": sum(t for _, t in self.times),
            "train_tokens_per_s": round(statistics.median(t / s for s, t in self.times)) if self.times else None,
            "chunks_timed": len(self.times),
            "training_state_bytes": training_state_bytes(self.model),
            "held_out_fvu": round(err / max(total_var, 1e-12), 5),
            "held_out_mean_l0_per_frame": active / len(held),
            "dead_window_tokens": int(flat.shape[0]),
            "held_out_dead_fraction": round(float(1.0 - fired.float().mean()), 4),
        }
        if any(p is not None for p in self.peaks):
            out["cuda_peak_bytes"] = statistics.median(p for p in self.peaks if p is not None)
        return out


if __name__ == "__main__":
    main()
