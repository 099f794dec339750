"""Training a TopK SAE from any iterator of (batch, d_in) activation tensors.

The trainer knows nothing of datasets or policies: recorded shards (``pai_core.activations``), bags or
live capture can all feed it. It writes ``model.safetensors``, ``config.json``, ``metrics.json``, a
``README.md`` model card and ``checkpoint.pt`` (weights, optimiser, step) for ``resume``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import ModelError, UsageError
from ..outputs import prepare_output_dir
from .io import save_sae
from .loss import aux_k_loss, normalized_mse, sparse_decode
from .model import SAEConfig, SparseAutoencoder

if TYPE_CHECKING:
    from ..distributed import SAEDataParallel

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
USAGE = "usage"  # training_step's per-latent usage statistics (a vector, not a logged scalar)
MAX_DEAD_WINDOW = 10_000_000  # openai/sparse_autoencoder's dead_toks_threshold
DEAD_WINDOW_DIVISOR = 10  # default window: a tenth of the run's tokens


@dataclass
class TrainConfig:
    """How an SAE is trained.

    Args:
        expansion_factor: latents = expansion_factor * d_in.
        k: active latents per token.
        aux_k: dead latents the AuxK loss uses per token.
        aux_coef: weight of the AuxK loss (1/32 in Gao et al.).
        dead_tokens: a latent silent for this many training tokens counts as dead and feeds AuxK; None
            (the default) scales the window with the run (``dead_window``).
        min_usage: usage floor as a fraction of the uniform rate k / n_latents (``SAEConfig.min_usage``):
            latents chosen less often get a selection bias until they are chosen again; 0 turns it off.
        usage_bias_rate: step of that bias per batch, as a fraction of the batch's mean active value.
        steps: optimiser steps in total (a resumed run continues up to it).
        batch_size: tokens per step.
        lr: Adam learning rate.
        init_batches: batches whose mean initialises ``b_pre`` (mean centring); they are trained on too.
        checkpoint_every: steps between checkpoints (0: only at the end).
        layer: encoder layer the tokens come from (stored in config.json for the pipeline).
        pooling: per-frame feature pooling stored in config.json: "max" or "mean".
        seed: initialisation seed.
        device: torch device ("cpu", "cuda").
    """

    expansion_factor: int = 16
    k: int = 32
    aux_k: int = 256
    aux_coef: float = 1.0 / 32.0
    dead_tokens: int | None = None
    min_usage: float = 0.5
    usage_bias_rate: float = 3e-3
    steps: int = 5_000
    batch_size: int = 4096
    lr: float = 1e-3
    init_batches: int = 8
    checkpoint_every: int = 1_000
    layer: int = -1
    pooling: Literal["max", "mean"] = "max"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("expansion_factor", "k", "aux_k", "steps", "batch_size", "init_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.dead_tokens is not None and self.dead_tokens < 1:
            raise ValueError(f"dead_tokens={self.dead_tokens} must be >= 1 (or None to scale with the run)")
        if not 0.0 <= self.min_usage <= 1.0:
            raise ValueError(f"min_usage={self.min_usage} must be within 0..1 (a fraction of the uniform rate k/n)")
        if self.usage_bias_rate < 0:
            raise ValueError(f"usage_bias_rate={self.usage_bias_rate} must be >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")

    @property
    def dead_window(self) -> int:
        """Training tokens a latent may stay silent before AuxK counts it dead: ``dead_tokens``, or else a
        tenth of the run (``steps * batch_size`` / 10) capped at OpenAI's 10 M tokens. A fixed window of
        1 M tokens never engaged AuxK in a 1.5 M-token run, while 47 % of the latents died."""
        if self.dead_tokens is not None:
            return self.dead_tokens
        return max(self.batch_size, min(MAX_DEAD_WINDOW, self.steps * self.batch_size // DEAD_WINDOW_DIVISOR))

    def sae_config(self, d_in: int, policy: str = "", extra: dict | None = None) -> SAEConfig:
        return SAEConfig(
            d_in=d_in,
            expansion_factor=self.expansion_factor,
            k=self.k,
            aux_k=self.aux_k,
            dead_tokens=self.dead_window,
            min_usage=self.min_usage,
            usage_bias_rate=self.usage_bias_rate,
            layer=self.layer,
            pooling=self.pooling,
            policy=policy,
            extra=dict(extra or {}),
        )


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- steps
def training_step(
    sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, aux_coef: float
) -> dict[str, torch.Tensor]:
    """One Adam step on a (B, d_in) batch: TopK reconstruction + AuxK, decoder gradient made orthogonal
    to the decoder rows, decoder rows renormalised, ``tokens_since_fired`` advanced. Returns detached
    scalar tensors (no host sync, so GPU steps queue back to back) and, under ``USAGE``, the counts that the
    caller's ``apply_usage_floor_`` takes its step from (``train_sae`` does; a data-parallel run sums them
    over the ranks first)."""
    cfg = sae.config
    pre = sae.pre_activation(x)
    values, indices = sae.select(pre)
    recon = sparse_decode(values, indices, sae.W_dec) + sae.b_pre
    fvu = normalized_mse(recon, x)
    dead = sae.tokens_since_fired >= cfg.dead_tokens
    aux = aux_k_loss(pre, (x - recon).detach(), sae.W_dec, dead, cfg.aux_k)
    loss = fvu + aux_coef * aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    remove_parallel_decoder_grad_(sae)
    optimizer.step()
    sae.unit_norm_decoder_()
    with torch.no_grad():
        counts = torch.zeros(cfg.n_latents, device=x.device).scatter_add_(
            0, indices.flatten(), (values.flatten() > 0).float()
        )
        since = sae.tokens_since_fired + x.shape[0]
        sae.tokens_since_fired.copy_(torch.where(counts > 0, torch.zeros_like(since), since))
        tokens = torch.full((1,), float(x.shape[0]), device=x.device)
        usage = torch.cat([counts, tokens, values.sum().reshape(1)])
    return {"loss": loss.detach(), "fvu": fvu.detach(), "aux": aux.detach(), "dead": dead.float().mean(), USAGE: usage}


@torch.no_grad()
def apply_usage_floor_(sae: SparseAutoencoder, usage: torch.Tensor) -> None:
    """The usage floor's step from a training step's ``USAGE`` statistics, (n_latents + 2,): how often each
    latent was chosen (value > 0), the batch's tokens, the sum of the chosen values. A data-parallel run sums
    them over the ranks first (``distributed.SAEDataParallel``), so every rank takes one process's step."""
    counts, tokens, value_sum = usage[:-2], usage[-2], usage[-1]
    sae.update_selection_bias_(counts, tokens, value_sum / (tokens * sae.config.k).clamp_min(1.0))


@torch.no_grad()
def remove_parallel_decoder_grad_(sae: SparseAutoencoder) -> None:
    """With unit-norm decoder rows, the gradient along each row only changes its norm, which the
    renormalisation undoes; removing it keeps Adam's statistics meaningful (openai/sparse_autoencoder)."""
    if sae.W_dec.grad is not None:
        parallel = (sae.W_dec.grad * sae.W_dec).sum(-1, keepdim=True)
        sae.W_dec.grad -= parallel * sae.W_dec


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder, batches: Iterable[torch.Tensor], dead_window: int | None = None
) -> dict[str, float]:
    """Metrics over every token of ``batches``: FVU (squared error over total variance about the
    tokens' mean), mean and max L0, NaN count, and the fraction of latents that never fire within the
    first ``dead_window`` tokens (all of them when None or fewer; ``dead_window_tokens`` says how many),
    so it means what the trainer's dead fraction over the same window means."""
    device = sae.b_pre.device
    n = 0
    sq_err = sum_l0 = 0.0
    max_l0 = 0
    nan = 0
    s1 = torch.zeros(sae.config.d_in, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    fired = torch.zeros(sae.config.n_latents, dtype=torch.bool, device=device)
    for x in batches:
        x = x.to(device, torch.float32)
        recon, z = sae(x)
        nan += int(torch.isnan(recon).any(-1).sum())
        sq_err += float((recon - x).double().pow(2).sum())
        l0 = (z > 0).sum(-1)
        sum_l0 += float(l0.sum())
        max_l0 = max(max_l0, int(l0.max()))
        in_window = x.shape[0] if dead_window is None else max(0, min(x.shape[0], dead_window - n))
        fired |= (z[:in_window] > 0).any(0)
        s1 += x.double().sum(0)
        s2 += x.double().pow(2).sum()
        n += x.shape[0]
    if n == 0:
        raise UsageError("evaluate_sae got no tokens")
    total_var = float(s2 - s1.pow(2).sum() / n)
    return {
        "fvu": sq_err / max(total_var, 1e-12),
        "mse": sq_err / (n * sae.config.d_in),
        "mean_l0": sum_l0 / n,
        "max_l0": max_l0,
        "dead_fraction": float(1.0 - fired.float().mean()),
        "dead_window_tokens": n if dead_window is None else min(n, dead_window),
        "nan_tokens": nan,
        "n_tokens": n,
    }


def dead_latents(sae: SparseAutoencoder, trained_tokens: int, held: dict | None, auxk_steps: int, steps: int) -> dict:
    """Dead latents, training and held-out, over one window of N tokens: N is the AuxK window, or fewer
    when the run or the held-out set is shorter. Training: latents silent over the last N training
    tokens (``tokens_since_fired``); held-out: latents that never fire on the first N held-out tokens."""
    aux_window = sae.config.dead_tokens
    window = held["dead_window_tokens"] if held else min(aux_window, trained_tokens)
    since = sae.tokens_since_fired
    out = {
        "window_tokens": int(window),
        "training": float((since >= window).float().mean()),
        "held_out": held["dead_fraction"] if held else None,
        "auxk_window_tokens": int(aux_window),
        "auxk_dead_at_end": float((since >= aux_window).float().mean()),
        "auxk_active_steps": int(auxk_steps),
        "steps": int(steps),
        "min_usage": sae.config.min_usage,
        "biased_latents": int((sae.selection_bias > 0).sum()),
    }
    return out


# ---------------------------------------------------------------------------------------------- loop
def _save_checkpoint(
    path: Path,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    step: int,
    cfg: TrainConfig,
    history: list[dict],
    auxk_steps: torch.Tensor,
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "sae_config": sae.config.to_dict(),
            "train_config": asdict(cfg),
            "model": sae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "auxk_steps": int(auxk_steps),
        },
        tmp,
    )
    os.replace(tmp, path)


def _check_resumable(ckpt: dict, sae_cfg: SAEConfig, path: Path) -> None:
    old = SAEConfig.from_dict(ckpt["sae_config"])
    for name in ("d_in", "expansion_factor", "k"):
        if getattr(old, name) != getattr(sae_cfg, name):
            raise ModelError(
                f"Checkpoint {path} has {name}={getattr(old, name)} but this run asks for "
                f"{getattr(sae_cfg, name)}; resume with the same settings or use another --output-dir"
            )


def train_sae(
    batches: Iterator[torch.Tensor],
    d_in: int,
    output_dir: str | Path,
    config: TrainConfig | None = None,
    held_out: Callable[[], Iterable[torch.Tensor]] | None = None,
    resume: bool = False,
    policy: str = "",
    extra: dict | None = None,
    progress: bool = True,
    parallel: SAEDataParallel | None = None,
) -> TrainResult:
    """Train an SAE on ``batches`` ((batch, d_in) tensors, a deterministic stream) and save it.

    Args:
        held_out: returns a fresh iterable of held-out batches for the final metrics (FVU, L0, dead).
        resume: continue from ``output_dir/checkpoint.pt``; the stream is replayed (read, not trained
            on) up to the checkpoint's step so the run continues on the same batches.
        policy, extra: recorded in config.json (the policy the tokens came from, recording details).
        parallel: data-parallel hook (``distributed.SAEDataParallel``): ``prepare(sae)`` before the first step,
            and each step runs through ``parallel.step(training_step, ...)``; None for one process.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    out = Path(output_dir)
    out = prepare_output_dir(out, "SAE folder (--output-dir)")
    ckpt_path = out / CHECKPOINT
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(cfg.sae_config(d_in, policy, extra)).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    step, history = 0, []
    auxk_steps = torch.zeros((), dtype=torch.long, device=device)  # steps with a dead latent (no host sync)
    batches = iter(batches)
    if ckpt_path.is_file() and not resume:
        raise UsageError(
            f"{out} holds a checkpoint of an earlier run; pass --resume to continue it or choose another --output-dir"
        )
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        _check_resumable(ckpt, sae.config, ckpt_path)
        sae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), list(ckpt["history"])
        auxk_steps += int(ckpt.get("auxk_steps", 0))
        for _ in tqdm(range(step), desc="replay stream to checkpoint", unit="batch", disable=not progress):
            if next(batches, None) is None:
                raise UsageError(f"The activation stream ended after fewer than the checkpoint's {step} batches")
        log.info("resumed from %s at step %d", ckpt_path, step)
    else:
        if resume:
            log.info("no checkpoint in %s: starting a new run", out)
        first = list(itertools.islice(batches, cfg.init_batches))
        if not first:
            raise UsageError("The activation stream is empty: no tokens to train on")
        width = first[0].shape[-1]
        if width != d_in:
            raise ModelError(f"Activations have width {width} but the SAE was set up for d_in={d_in}")
        with torch.no_grad():
            sae.b_pre.copy_(torch.cat(first).to(device, torch.float32).mean(0))
        batches = itertools.chain(first, batches)
    bar = tqdm(total=cfg.steps, initial=step, desc="train SAE", unit="step", disable=not progress)
    if parallel is not None:
        parallel.prepare(sae)
    seen, start = 0, time.perf_counter()
    stats: dict[str, float] = {}
    log_every = 50
    while step < cfg.steps:
        x = next(batches, None)
        if x is None:
            raise UsageError(f"The activation stream ended at step {step} of {cfg.steps}; use a repeating stream")
        x = x.to(device, torch.float32)
        if x.shape[-1] != d_in:
            raise ModelError(f"Activation batch has width {x.shape[-1]}, the SAE expects {d_in}")
        step_stats = (
            training_step(sae, optimizer, x, cfg.aux_coef)
            if parallel is None
            else parallel.step(training_step, sae, optimizer, x, cfg.aux_coef)
        )
        apply_usage_floor_(sae, step_stats.pop(USAGE))
        auxk_steps += step_stats["dead"] > 0
        step += 1
        seen += x.shape[0]
        if step % log_every == 0 or step == cfg.steps or step % (cfg.checkpoint_every or cfg.steps) == 0:
            stats = {k: float(v) for k, v in step_stats.items()}
            if any(v != v for v in stats.values()):
                raise ModelError(f"Training diverged (NaN) by step {step}: {stats}; lower --lr")
            history.append({"step": step, **{k: round(v, 6) for k, v in stats.items()}})
            bar.set_postfix(fvu=f"{stats['fvu']:.4f}", dead=f"{stats['dead']:.3f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _save_checkpoint(ckpt_path, sae, optimizer, step, cfg, history, auxk_steps)
        bar.update(1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    _save_checkpoint(ckpt_path, sae, optimizer, step, cfg, history, auxk_steps)
    sae.eval()
    metrics: dict = {
        "steps": step,
        "tokens_this_run": seen,
        "tokens_per_s": seen / elapsed if elapsed > 0 and seen else None,
        "last_batch": stats,
        "training": asdict(cfg),
        "history": history,
    }
    trained = step * cfg.batch_size  # tokens_since_fired spans the whole run, resumed or not
    held = None
    if held_out is not None:
        held = metrics["held_out"] = evaluate_sae(sae, held_out(), dead_window=min(sae.config.dead_tokens, trained))
    metrics["dead_latents"] = dead_latents(sae, trained, held, int(auxk_steps), step)
    save_sae(sae, out, metrics)
    (out / "README.md").write_text(model_card(sae.config, metrics))
    return TrainResult(sae, metrics)


def model_card(config: SAEConfig, metrics: dict) -> str:
    """A short README.md for the SAE directory (and its hub repo)."""
    held = metrics.get("held_out", {})
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in held.items())
    extra = json.dumps(config.extra, indent=2) if config.extra else "{}"
    return f"""---
tags: [lerobot, robotics, sparse-autoencoder, interpretability, pai]
---
# TopK sparse autoencoder on ACT encoder tokens

Trained with `pai train-sae` on encoder layer {config.layer} tokens of policy `{config.policy or "?"}`.
One SAE shared by every token position: {config.d_in} -> {config.n_latents} latents
(expansion {config.expansion_factor}), TopK k = {config.k}, AuxK k = {config.aux_k}, decoder rows of unit
norm, pre-encoder bias initialised to the mean token. Frame features pool token codes by `{config.pooling}`.

## Held-out metrics

| metric | value |
|---|---|
{rows or "| (none) | |"}

Steps: {metrics.get("steps")}, tokens/s: {metrics.get("tokens_per_s") or 0:.4g}.

{dead_latent_text(metrics.get("dead_latents"))}

## Recording

```json
{extra}
```

## Use

```python
from pai_core.pipeline import Pipeline
pipe = Pipeline.load(policy_path, sae_path="<this directory or hub id>")
```

The OOD alarm needs `ood_params.json` (and the reference file it names) from `pai calibrate-ood`;
`pai push --sae-path DIR --hub-repo-id ID` publishes the folder with them as one unit.
"""


def dead_latent_text(dead: dict | None) -> str:
    """The model card's dead-latent paragraph: training and held-out over the same window."""
    if not dead:
        return ""
    n = f"{dead['window_tokens']:,}"
    held = "" if dead["held_out"] is None else f"{dead['held_out']:.1%} never fire on the first {n} held-out tokens; "
    return (
        f"## Dead latents\n\nOver a window of {n} tokens: {held}"
        f"{dead['training']:.1%} did not fire over the last {n} training tokens. "
        f"AuxK counted a latent dead after {dead['auxk_window_tokens']:,} silent training tokens and was "
        f"active at {dead['auxk_active_steps']} of {dead['steps']} steps ({dead['auxk_dead_at_end']:.1%} "
        "dead at the end)." + usage_floor_text(dead)
    )


def usage_floor_text(dead: dict) -> str:
    """The usage floor's sentence (SAEs trained before it existed have none)."""
    if "min_usage" not in dead:
        return ""
    if not dead["min_usage"]:
        return " No usage floor."
    return (
        f" Usage floor {dead['min_usage']:g} x k/n: a latent chosen for fewer of a batch's tokens gets a selection "
        f"bias until it is chosen again; {dead['biased_latents']} latents carry one at the end."
    )
