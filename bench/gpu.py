#!/usr/bin/env python
"""Issue 14's GPU measurements in one process, side by side (docs/gpu.md). Installs nothing.

  live   batch-1 latency (median, p99) of the eager plain forward (LeRobot preprocessor + predict_action_chunk
         + postprocessor), of ``Introspector.step`` eager and as a CUDA graph, and of ``Pipeline.step`` (SAE
         features, OOD score, alarm) plus the two overlays, from uint8 images; graph vs eager outputs
  bf16   the same graph path with the policy in bfloat16: latency and accuracy against float32
  batch  ``step_batch`` at batch 32 with every output against the plain batched forward (the replay ratio
         without bag decoding and video encoding), float32 and bfloat16
  sae    TopK SAE training step (512 -> 8192, k = 32) against the seed's whole-frame SAE (77 x 512 -> 39,424):
         tokens/s and peak memory
  knn    bench/patch_knn_scale.py: the patch_knn reference at 50 episodes x 400 frames on the device
  replay bench/replay.py --device cuda (bag decoding, every output, videos); node: bench/node.py when rclpy
         imports (60 s at 30 Hz, two 480x640 cameras)

    python bench/gpu.py --out outputs/gpu/gpu.json
    python bench/gpu.py --only live bf16 --runs 100
    python bench/gpu.py --smoke          # CPU, tiny sizes: checks this script's plumbing before GPU time is spent
Defaults: random-init ACT at LeRobot's sizes (dim_model 512, 4 encoder layers, chunk 100), two 480x640 cameras.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEVICE = "cuda"  # --smoke: "cpu"
SECTIONS = ("live", "bf16", "batch", "sae", "knn", "node", "replay")  # most wanted first: a cut run keeps them


def stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
        "runs": len(ms),
    }


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build(work: Path, height: int, width: int, dim_model: int = 512) -> dict:
    from pai_core.ood import OODParams
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from pai_core.testing import make_act_policy

    cams = {"observation.images.front": (height, width), "observation.images.wrist": (height, width)}
    policy = make_act_policy(
        work / "policy",
        cameras=cams,
        dim_model=dim_model,
        n_heads=8,
        dim_feedforward=3200 if dim_model >= 512 else 4 * dim_model,
        n_encoder_layers=4,
        chunk_size=100,
        n_action_steps=100,
    )
    save_sae(SparseAutoencoder(SAEConfig(d_in=dim_model, expansion_factor=16, k=32)), work / "sae")
    OODParams(threshold=1e30).save(work / "sae" / "ood_params.json")
    return {"policy": str(policy), "sae": str(work / "sae"), "cams": cams}


def observations(cams: dict, n: int) -> list:
    from pai_core import Observation
    from pai_core.testing import synthetic_frame

    rng = np.random.default_rng(0)
    return [
        Observation(
            {k: synthetic_frame(h, w, i / n, seed=i) for k, (h, w) in cams.items()},
            state=rng.normal(size=6).astype(np.float32),
            timestamp=i / 30,
        )
        for i in range(n)
    ]


def engine(models: dict, **config):
    from pai_core import IntrospectionConfig, Introspector

    if DEVICE != "cuda" and config.get("cuda_graph") == "on":
        config["cuda_graph"] = "auto"  # --smoke on the CPU: the graph path is exercised on the GPU only
    return Introspector.from_pretrained(models["policy"], IntrospectionConfig(device=DEVICE, **config))


def compare(a, b) -> dict:
    """How far results ``b`` are from ``a`` (lists of FrameResult): action error in real units, total variation
    distance of the attention and rollout mass, share differences, token cosine."""
    act = max(float(np.abs(x.action_chunk - y.action_chunk).max()) for x, y in zip(a, b))
    span = max(float(np.ptp(x.action_chunk)) for x in a)

    def tv(x, y, kind):
        return 0.5 * sum(float(np.abs(getattr(x, kind)[c] - getattr(y, kind)[c]).sum()) for c in getattr(x, kind))

    cos = min(
        float(torch.nn.functional.cosine_similarity(x.tokens.float(), y.tokens.float(), dim=-1).min())
        for x, y in zip(a, b)
    )
    return {
        "action_chunk_max_abs": act,
        "action_chunk_max_abs_over_range": act / span if span else None,
        "attention_tv_max": max(tv(x, y, "attention") for x, y in zip(a, b)),
        "rollout_tv_max": max(tv(x, y, "rollout") for x, y in zip(a, b)),
        "camera_share_max_abs": max(
            abs(x.camera_share[c] - y.camera_share[c]) for x, y in zip(a, b) for c in x.camera_share
        ),
        "token_cosine_min": cos,
        "bit_identical": all(
            np.array_equal(x.action_chunk, y.action_chunk)
            and all(np.array_equal(x.attention[c], y.attention[c]) for c in x.attention)
            and torch.equal(x.tokens, y.tokens)
            for x, y in zip(a, b)
        ),
    }


def live(models: dict, obs: list, runs: int, dtype: str = "float32") -> dict:
    """Interleaved (bench/timing.py): plain LeRobot inference on a fresh hook-free float32 load (bench/plain.py;
    LeRobot itself has no bf16 path for ACT, which builds its latent in float32, so bf16 is compared with it
    too), ``step`` eager and graph, and with float32 ``Pipeline.step`` + overlays."""
    from bench.plain import assert_no_hooks, load_plain
    from bench.timing import interleave
    from pai_core.overlay import render_overlays
    from pai_core.pipeline import Pipeline

    out: dict = {}
    plain_p = load_plain(models["policy"], DEVICE)
    eager = engine(models, cuda_graph="off", model_dtype=dtype)
    graph = engine(models, cuda_graph="on", model_dtype=dtype)
    one = obs[0]

    def plain():
        with torch.inference_mode():
            batch = plain_p.preprocessor(plain_p.to_lerobot(one.images, one.state))
            return plain_p.postprocessor(plain_p.policy.predict_action_chunk(batch))

    sides = {"plain": plain, "eager": lambda: eager.step(one), "graph": lambda: graph.step(one)}
    pipe = None
    if dtype == "float32":  # Pipeline.load takes no dtype: in bf16 the engine's figures stand for it
        pipe = Pipeline.load(models["policy"], models["sae"], device=DEVICE)

        def everything():
            frame = pipe.step(one)
            render_overlays(frame.observation, frame.result)

        sides["pipeline"] = everything
    t = interleave(sides, rounds=runs, warmup=5, sync=sync)
    assert_no_hooks(plain_p.policy, "the plain LeRobot policy (after the rounds)")

    def st(side: str) -> dict:
        return stats(t.ms[side])

    out["plain_eager_forward"] = st("plain")
    out["step_eager"] = st("eager")
    out["step_graph"] = st("graph")
    out["graph_status"] = graph.graph.status.describe()
    out["ratio_eager_step_to_plain_eager"] = round(t.ratio("eager", "plain"), 3)
    out["ratio_graph_step_to_plain_eager"] = round(t.ratio("graph", "plain"), 3)
    eager.reset()
    graph.reset()
    out["graph_vs_eager"] = compare([eager.step(o) for o in obs], [graph.step(o) for o in obs])
    if pipe is not None:
        out["pipeline_graph"] = pipe.engine.graph.status.describe()
        out["pipeline_step_plus_overlays"] = st("pipeline")
        out["ratio_pipeline_to_plain_eager"] = round(t.ratio("pipeline", "plain"), 3)
    return out


def bf16(models: dict, obs: list, runs: int) -> dict:
    out = live(models, obs, runs, dtype="bfloat16")
    fp32 = engine(models, cuda_graph="on")
    low = engine(models, cuda_graph="on", model_dtype="bfloat16")
    out["bf16_vs_fp32"] = compare([fp32.step(o) for o in obs], [low.step(o) for o in obs])
    return out


def batch(models: dict, obs: list, size: int = 32) -> dict:
    """``step_batch`` with every output against the plain batched ``policy.model`` forward of a fresh hook-free
    float32 load (bench/plain.py), interleaved; bf16 is compared with that float32 plain forward too (LeRobot
    has no bf16 path for ACT: its latent is built in float32). ``ratio``: plain time / step_batch time."""
    from bench.plain import assert_no_hooks, load_plain
    from bench.timing import interleave

    out = {}
    frames = (obs * (size // len(obs) + 1))[:size]
    plain_p = load_plain(models["policy"], DEVICE)
    with torch.inference_mode():
        items = [plain_p.to_lerobot(o.images, o.state) for o in frames]
        prepped = plain_p.preprocessor({k: torch.stack([it[k] for it in items]) for k in items[0]})
    model_batch = dict(prepped)
    model_batch["observation.images"] = [prepped[k] for k in plain_p.policy.config.image_features]

    def plain():
        with torch.inference_mode():
            return plain_p.policy.model(model_batch)

    for dtype in ("float32", "bfloat16"):
        e = engine(models, model_dtype=dtype)
        t = interleave(
            {"plain": plain, "full": functools.partial(e.step_batch, frames)}, rounds=20, warmup=3, sync=sync
        )
        p, f = t.median("plain"), t.median("full")
        out[dtype] = {
            "plain_forward_fps": round(size * 1000 / p, 1),
            "plain_dtype": "float32",
            "step_batch_every_output_fps": round(size * 1000 / f, 1),
            "ratio": round(p / f, 3),
            "batch": size,
        }
    assert_no_hooks(plain_p.policy, "the plain LeRobot policy (after the rounds)")
    return out


def _ours(d: int = 512, tokens: int = 4096):
    from pai_core.sae import SAEConfig, SparseAutoencoder
    from pai_core.sae.train import training_step

    model = SparseAutoencoder(SAEConfig(d_in=d, expansion_factor=16, k=32, aux_k=256, dead_tokens=10**6)).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(tokens, d, device=DEVICE)
    return model, (lambda: training_step(model, opt, x, 1 / 32)), tokens, {"batch_tokens": tokens}


def _seed(n_tokens: int = 77, d: int = 512, frames_per_step: int = 64):
    from bench.baselines import WholeFrameSAE

    model = WholeFrameSAE(n_tokens, d).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames = torch.randn(frames_per_step, n_tokens, d, device=DEVICE)

    def step():
        x, f, x_hat = model(frames)
        loss = ((x_hat - x) ** 2).mean() + 1e-3 * f.abs().mean()  # the seed's MSE + L1 (baselines.py)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step, frames_per_step * n_tokens, {"batch_frames": frames_per_step}


def sae(small: bool = False) -> dict:
    """small (--smoke): d 32, 10 tokens a frame, so the seed's SAE fits a CPU. Each side is built and stepped
    once on its own first, for its peak memory (what it allocated above what was held before it was built);
    then the optimiser steps of both are timed interleaved (bench/timing.py)."""
    from bench.timing import interleave

    out: dict = {}
    builds = (
        (("topk_per_token", lambda: _ours(32, 512)), ("seed_whole_frame", lambda: _seed(10, 32, 16)))
        if small
        else (("topk_per_token", _ours), ("seed_whole_frame", _seed))
    )
    steps, tokens = {}, {}
    for name, build_side in builds:
        held = torch.cuda.memory_allocated() if DEVICE == "cuda" else 0
        reset_peak()
        model, step, n_tokens, extra = build_side()
        step()
        sync()
        peak = round((torch.cuda.max_memory_allocated() - held) / 2**30, 2) if DEVICE == "cuda" else None
        out[name] = {"peak_gib": peak, "parameters": sum(p.numel() for p in model.parameters())} | extra
        steps[name], tokens[name] = step, n_tokens
    t = interleave(steps, rounds=10, warmup=2, sync=sync)
    for name in steps:
        out[name]["tokens_per_s"] = round(tokens[name] * 1000 / t.median(name))
        out[name]["step_ms_median"] = round(t.median(name), 3)
    o, s = out["topk_per_token"], out["seed_whole_frame"]
    out["speedup"] = round(o["tokens_per_s"] / s["tokens_per_s"], 2)
    if o["peak_gib"] is not None:
        out["memory_fraction"] = round(o["peak_gib"] / s["peak_gib"], 4)
        out["target_10x_at_a_fifth_of_memory"] = out["speedup"] >= 10 and out["memory_fraction"] <= 0.2
    return out


def script(args: list[str], timeout: int) -> dict:
    """Run another benchmark; its stdout (JSON where it prints JSON) and how long it took."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": " ".join(args)}
    text = proc.stdout.strip()
    try:
        result = json.loads(text)
    except ValueError:
        result = text[-4000:]
    return {
        "rc": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "output": result,
        **({"stderr_tail": proc.stderr[-2000:]} if proc.returncode else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 steps per path")
    parser.add_argument("--height", type=int, default=None, help="camera height (480; --smoke 96)")
    parser.add_argument("--width", type=int, default=None, help="camera width (640; --smoke 128)")
    parser.add_argument("--dim-model", type=int, default=None, help="ACT dim_model (512; --smoke 64)")
    parser.add_argument("--node-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, 96x128 cameras, dim_model 64, 3 runs, no replay/node: checks the plumbing",
    )
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE, args.runs = "cpu", 3
        args.only = [s for s in args.only if s not in ("replay", "node")]
    elif not torch.cuda.is_available():
        print(
            "bench/gpu.py needs a CUDA device (torch.cuda.is_available() is False); --smoke runs on the CPU",
            file=sys.stderr,
        )
        return 2
    args.height = args.height or (96 if args.smoke else 480)
    args.width = args.width or (128 if args.smoke else 640)
    dim_model = args.dim_model or (64 if args.smoke else 512)
    report: dict = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (--smoke)",
        "torch": torch.__version__,
        "cameras": f"2 x {args.height}x{args.width}",
        "dim_model": dim_model,
    }
    work = Path(tempfile.mkdtemp(prefix="pai-bench-gpu-"))

    def save():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2, default=str))

    models = build(work, args.height, args.width, dim_model) if {"live", "bf16", "batch"} & set(args.only) else None
    obs = observations(models["cams"], 10) if models else []
    sections = {
        "live": lambda: live(models, obs, args.runs),
        "bf16": lambda: bf16(models, obs, args.runs),
        "batch": lambda: batch(models, obs, 4 if args.smoke else 32),
        "sae": lambda: sae(small=args.smoke),
        "knn": lambda: script(
            ["bench/patch_knn_scale.py", "--device", DEVICE]
            + (["--episodes", "4", "--frames", "50", "--runs", "2", "--batch", "1"] if args.smoke else []),
            300,
        ),
        "replay": lambda: {
            "no_video": script(["bench/replay.py", "--device", "cuda", "--frames", "240", "--no-video"], 150),
            "with_video": script(["bench/replay.py", "--device", "cuda", "--frames", "240"], 150),
        },
        "node": lambda: (
            script(
                [
                    "bench/node.py",
                    "--height",
                    str(args.height),
                    "--width",
                    str(args.width),
                    "--hz",
                    "30",
                    "--dim-model",
                    "512",
                    "--device",
                    "cuda",
                    "--seconds",
                    str(args.node_seconds),
                ],
                int(args.node_seconds) + 240,
            )
            if importlib.util.find_spec("rclpy")
            else {"skipped": "rclpy does not import here"}
        ),
    }
    for name in args.only:
        t0 = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as exc:  # one section failing must not lose the others' numbers
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[gpu] {name} done in {report['seconds'][name]} s", file=sys.stderr, flush=True)
        save()
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
