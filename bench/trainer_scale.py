#!/usr/bin/env python
"""The trainer workflow at a realistic shape, measured step by step and extrapolated to a real dataset.

Generates a LeRobot v3 dataset shaped like an SO-101 recording (two 480x640 cameras, AV1 video, six
joints named ``shoulder_pan.pos`` ...) at a size this machine runs, an ACT at LeRobot's defaults
(dim_model 512, 4 encoder layers, chunk 100), and runs every step as its own ``pai`` process, as a user
would: record-activations, train-sae, calibrate-ood (patch_knn, twice: a small and the full reference,
so the reference's share of peak memory is measured, not assumed), evaluate-ood, record-features,
analyse-features, replay. Per step: wall time and peak RSS (the child's ru_maxrss). Then:

- the run-time memory of a ``patch_knn`` reference loaded memory-mapped against loaded into memory
  (anonymous RSS of a process that scores frames, at two reference sizes);
- the extrapolation to --target-episodes x --target-frames, with the arithmetic printed: which steps
  grow with the data (time, disk, memory), what fits in 24 GB, which need a GPU;
- the ratio of each forward-bound step (record-activations, evaluate-ood, record-features, replay) to plain
  LeRobot inference on the same number of frames, also run as a process (a fresh hook-free load, batch 8,
  measured once before and once after the steps, median): process start and loading are in both sides.
  train-sae, calibrate-ood and analyse-features print no ratio: they have no plain-LeRobot counterpart
  (SAE training; a reference fit whose forward count depends on its budget; reading recorded features).

    python bench/trainer_scale.py                    # 3 episodes x 30 frames (about 10 min on 2 cores)
    python bench/trainer_scale.py --episodes 2 --frames 12 --height 96 --width 128 --dim-model 64   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SO101 = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
GB = 1e9


CHILD = (
    "import resource, sys\nfrom pai_core.cli import main\nrc = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)"
)


def run_step(name: str, argv: list[str], results: dict) -> dict:
    """Run ``pai ARGV`` in a child process of its own; record wall time, its peak RSS and its JSON result."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, argv)],
        capture_output=True,
        text=True,
        env=os.environ | {"TQDM_DISABLE": "1"},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"step {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024
    out = proc.stdout
    try:
        parsed = json.loads(out[out.index("{") :]) if "{" in out else {}
    except ValueError:
        parsed = {}
    results[name] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak / GB, 3), "result": parsed}
    print(f"{name:<22} {wall:8.1f} s   peak RSS {peak / GB:6.2f} GB", flush=True)
    return results[name]


PLAIN_CHILD = """
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from bench.plain import assert_no_hooks, load_plain
t0 = time.perf_counter()
plain = load_plain(sys.argv[2])
loaded = time.perf_counter()
shapes = {k: (int(f.shape[1]), int(f.shape[2])) for k, f in plain.policy.config.image_features.items()}
state = int(plain.policy.config.robot_state_feature.shape[0])
rng = np.random.default_rng(0)
n, batch = int(sys.argv[3]), int(sys.argv[4])
with torch.inference_mode():
    for start in range(0, n, batch):
        items = [plain.to_lerobot({k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in
                 shapes.items()}, rng.normal(size=state).astype(np.float32)) for _ in range(min(batch, n - start))]
        plain.postprocessor(plain.policy.predict_action_chunk(
            plain.preprocessor({k: torch.stack([it[k] for it in items]) for k in items[0]})))
assert_no_hooks(plain.policy, "the plain LeRobot policy")
print(json.dumps({"load_s": loaded - t0, "forward_s_per_frame": (time.perf_counter() - loaded) / n}))
"""


def plain_baseline(policy: Path, frames: int, batch: int) -> dict:
    """Plain LeRobot inference as a process of its own, like the steps: a fresh hook-free load
    (bench/plain.py), then ``frames`` frames of the policy's shape at ``batch`` per forward (from uint8). Returns
    the process's wall time, its load time and the forward seconds per frame."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_CHILD, str(ROOT), str(policy), str(frames), str(batch)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"the plain LeRobot baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - start
    out["start_s"] = out["wall_s"] - out["forward_s_per_frame"] * frames  # process start, imports, load
    return out


def _child(queue, fn, args) -> None:
    import resource

    value = fn(*args)
    queue.put(value | {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def child_peak(fn, *args) -> dict:
    """``fn(*args)`` (a dict) in a fresh spawned process, with that process's peak RSS (bytes) added: sides do
    not share a maximum, and no torch thread pool is forked mid-use (a forked child can deadlock in it)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return value


def _status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


def _grids(b: int, g):
    import torch

    return {c: torch.rand(b, 192, 24, 32, generator=g) for c in ("front", "wrist")}  # ResNet layer1+2, 480x640


def fitting_memory(n_frames: int, folder: str) -> dict:
    """Build and save a real-size patch_knn reference of ``n_frames`` (two cameras, 192 x 24 x 32 patches)
    through ``ReferenceBuilder``, as calibrate-ood does; the caller reads this child's peak RSS."""
    import torch

    from pai_core.ood.patch_knn import PatchKnnConfig, ReferenceBuilder

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    base = _status()["VmRSS"]
    builder = ReferenceBuilder(n_frames, PatchKnnConfig())
    for i in range(0, n_frames, 16):
        b = min(16, n_frames - i)
        builder.add(_grids(b, g), np.random.default_rng(i).normal(size=(b, 6)), i // 100)
    path = Path(folder) / f"ref_{n_frames}.safetensors"
    builder.finish(max_stat_frames=100).save_file(path)
    return {"file_bytes": path.stat().st_size, "base_rss": base}


def scoring_memory(sizes: list[int], mmap: bool, folder: str) -> dict:
    """RSS (anonymous and file-backed) after loading each reference of ``sizes`` frames in turn and scoring
    30 frames against it, in one process (so allocator warm-up is not counted as growth)."""
    import torch

    from pai_core.ood.patch_knn import PatchKnnScorer

    torch.set_num_threads(2)
    out = {}
    for n in sizes:
        path = Path(folder) / f"ref_{n}.safetensors"
        scorer = PatchKnnScorer.load_file(path, mmap=mmap)
        g = torch.Generator().manual_seed(1)
        for i in range(30):
            maps = {
                c: [torch.rand(1, 64, 120, 160, generator=g), torch.rand(1, 128, 60, 80, generator=g)]
                for c in ("front", "wrist")
            }
            scorer.score_maps(maps, np.random.default_rng(i).normal(size=(1, 6)))
        out[str(n)] = _status() | {"file_bytes": path.stat().st_size}
        del scorer
    return out


def reference_memory() -> tuple[float, dict]:
    """patch_knn memory measured at real patch size, each side in a fresh child: the builder's peak RSS
    per MB of reference file (200 -> 1000 frames), and the growth of a scoring process's anonymous and
    file-backed RSS with the reference, memory-mapped and copied into memory."""
    mem_dir = tempfile.mkdtemp(prefix="pai-ref-")
    fits = {n: child_peak(fitting_memory, n, mem_dir) for n in (200, 1000)}
    d_file = fits[1000]["file_bytes"] - fits[200]["file_bytes"]
    builder_ratio = (fits[1000]["peak_rss"] - fits[200]["peak_rss"]) / d_file
    print(
        f"ReferenceBuilder at real patch size, 200 -> 1000 frames (+{d_file / 1e6:.0f} MB of file): peak RSS "
        f"+{(fits[1000]['peak_rss'] - fits[200]['peak_rss']) / 1e6:.0f} MB = {builder_ratio:.2f}x the file "
        "(target <= 1.5x)"
    )
    run_mem = {mode: child_peak(scoring_memory, [200, 1000], mode == "mmap", mem_dir) for mode in ("mmap", "memory")}
    grow = {
        mode: {k: (m["1000"][k] - m["200"][k]) / d_file for k in ("RssAnon", "RssFile")} for mode, m in run_mem.items()
    }
    for mode, g in grow.items():
        print(
            f"scoring against 200 then 1000 frames, reference "
            f"{'memory-mapped' if mode == 'mmap' else 'copied into memory'}:"
            f" anonymous RSS {g['RssAnon']:+.3f} MB per MB of reference, file-backed (page cache, reclaimable) "
            f"{g['RssFile']:+.3f}"
        )
    return builder_ratio, grow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=3, help="generated episodes (the last one held out)")
    parser.add_argument("--frames", type=int, default=30, help="frames per episode")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--dim-model", type=int, default=512)
    parser.add_argument("--sae-steps", type=int, default=20, help="SAE steps measured (tokens/s extrapolated)")
    parser.add_argument("--sae-batch", type=int, default=2048, help="tokens per SAE step")
    parser.add_argument("--target-episodes", type=int, default=50)
    parser.add_argument("--target-frames", type=int, default=400)
    parser.add_argument("--target-sae-steps", type=int, default=5000, help="SAE steps of the real training run")
    parser.add_argument("--reference-max-gb", type=float, default=4.0, help="patch_knn budget at the target size")
    parser.add_argument("--memory-gb", type=float, default=24.0, help="RAM of the machine to fit in")
    parser.add_argument("--output-dir", default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--memory-only", action="store_true", help="only the patch_knn reference memory figures")
    args = parser.parse_args()
    if args.memory_only:
        reference_memory()
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    from pai_core.testing import make_act_policy, make_lerobot_dataset

    work = Path(args.output_dir or tempfile.mkdtemp(prefix="pai-trainer-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cams = {
        "observation.images.front": (args.height, args.width),
        "observation.images.wrist": (args.height, args.width),
    }
    t0 = time.perf_counter()
    ds_root, dark_root = work / "dataset", work / "dark"
    if not ds_root.exists():
        make_lerobot_dataset(
            ds_root,
            "bench/so101",
            cameras=cams,
            episodes=args.episodes,
            frames=args.frames,
            fps=30,
            use_videos=True,
            state_names=SO101,
        )
        make_lerobot_dataset(
            dark_root,
            "bench/so101_dark",
            cameras=cams,
            episodes=1,
            frames=args.frames,
            fps=30,
            use_videos=True,
            state_names=SO101,
            seed=7,
            variant="dark",
        )
    policy = work / "policy"
    if not policy.exists():
        make_act_policy(
            policy,
            cameras=cams,
            dim_model=args.dim_model,
            n_heads=8,
            dim_feedforward=3200 if args.dim_model == 512 else 4 * args.dim_model,
            n_encoder_layers=4,
            chunk_size=100,
            n_action_steps=100,
        )
    print(
        f"generated {args.episodes} x {args.frames} frames, two {args.height}x{args.width} AV1 cameras, "
        f"ACT d{args.dim_model} in {time.perf_counter() - t0:.0f} s ({work})\n",
        flush=True,
    )

    results: dict = {}
    held = str(args.episodes - 1)
    n_now = args.episodes * args.frames
    plain_runs = [plain_baseline(policy, n_now, 8)]  # before the steps; again after them (the load may change)
    run_step(
        "record-activations",
        [
            "record-activations",
            "--dataset-repo-id",
            "bench/so101",
            "--root",
            ds_root,
            "--policy-path",
            policy,
            "--output-dir",
            work / "acts",
            "--frames-per-batch",
            8,
        ],
        results,
    )
    run_step(
        "train-sae",
        [
            "train-sae",
            "--activations",
            work / "acts",
            "--output-dir",
            work / "sae",
            "--steps",
            args.sae_steps,
            "--batch-size",
            args.sae_batch,
            "--val-fraction",
            1 / args.episodes,
            "--checkpoint-every",
            10**6,
        ],
        results,
    )
    from pai_core.preflight import smallest_alpha

    alpha = max(0.05, smallest_alpha(args.frames))
    per_ref_frame = 0
    for label in ("calibrate-ood", "calibrate-ood small"):  # the full reference, then a third of it
        argv = [
            "calibrate-ood",
            "--sae-path",
            work / "sae",
            "--policy-path",
            policy,
            "--dataset-repo-id",
            "bench/so101",
            "--root",
            ds_root,
            "--episodes",
            held,
            "--alpha",
            alpha,
            "--score",
            "patch_knn",
            "--batch-size",
            8,
        ]
        if label.endswith("small"):
            argv += ["--reference-max-gb", results["calibrate-ood"]["reference"]["frames"] * per_ref_frame / 3 / GB]
        run_step(label, argv, results)
        summary = json.loads((work / "sae" / "ood_params.json").read_text())["reference_summary"]
        results[label]["reference"] = summary
        per_ref_frame = summary["bytes_per_frame"]
    run_step("calibrate-ood", argv[:-2], results)  # leave the full reference in place for the steps below
    results["calibrate-ood"]["reference"] = json.loads((work / "sae" / "ood_params.json").read_text())[
        "reference_summary"
    ]
    run_step(
        "evaluate-ood",
        [
            "evaluate-ood",
            "--sae-path",
            work / "sae",
            "--policy-path",
            policy,
            "--id",
            ds_root,
            "--id-episodes",
            held,
            "--ood",
            dark_root,
            "--output-dir",
            work / "eval",
        ],
        results,
    )
    run_step(
        "record-features",
        [
            "record-features",
            "--dataset-repo-id",
            "bench/so101",
            "--root",
            ds_root,
            "--policy-path",
            policy,
            "--sae-path",
            work / "sae",
            "--episodes",
            held,
            "--output-dir",
            work / "features",
        ],
        results,
    )
    run_step(
        "analyse-features",
        [
            "analyse-features",
            "--record-dir",
            work / "features",
            "--output-dir",
            work / "analysis",
            "--top-features",
            4,
            "--clips-per-feature",
            1,
        ],
        results,
    )
    run_step(
        "replay",
        [
            "replay",
            "--dataset-repo-id",
            "bench/so101",
            "--root",
            ds_root,
            "--episodes",
            held,
            "--policy-path",
            policy,
            "--sae-path",
            work / "sae",
            "--output-dir",
            work / "replay",
            "--no-progress",
        ],
        results,
    )

    plain_runs.append(plain_baseline(policy, n_now, 8))
    plain = {k: float(np.median([r[k] for r in plain_runs])) for k in ("start_s", "forward_s_per_frame")}
    results["plain_lerobot"] = {"runs": plain_runs, **plain}
    # frames each forward-bound step runs through the policy (calibrate-ood's count depends on its reference)
    step_frames = {
        "record-activations": n_now,
        "evaluate-ood": 2 * args.frames,
        "record-features": args.frames,
        "replay": args.frames,
    }
    print(
        f"\nplain LeRobot inference as a process (hook-free load, batch 8, median of {len(plain_runs)} runs, one "
        f"before and one after the steps): start {plain['start_s']:.1f} s + "
        f"{plain['forward_s_per_frame'] * 1e3:.0f} ms/frame"
    )
    for name, n in step_frames.items():
        base = plain["start_s"] + n * plain["forward_s_per_frame"]
        results[name]["ratio_vs_plain"] = results[name]["wall_s"] / base
        print(
            f"  ratio {name} / plain on its {n} frames = {results[name]['wall_s']:.1f} s / {base:.1f} s = "
            f"{results[name]['wall_s'] / base:.2f}"
        )

    # ---------------------------------------------------------------- reference memory: measured slopes
    small, full = results["calibrate-ood small"], results["calibrate-ood"]
    d_ref = (full["reference"]["frames"] - small["reference"]["frames"]) * per_ref_frame
    d_rss = (full["peak_rss_gb"] - small["peak_rss_gb"]) * GB
    fit_ratio = d_rss / d_ref if d_ref > 0 else float("nan")
    print(
        f"\npatch_knn fitting: reference {small['reference']['frames']} -> {full['reference']['frames']} frames "
        f"(+{d_ref / 1e6:.0f} MB of file) raised peak RSS by {d_rss / 1e6:.0f} MB: {fit_ratio:.2f}x the file "
        "(end to end; a few MB of RSS noise weigh heavily at this size)"
    )
    builder_ratio, grow = reference_memory()
    cli_ratio, fit_ratio = fit_ratio, builder_ratio  # the CLI's slope is within RSS noise at this size

    # ---------------------------------------------------------------- extrapolation
    n_target = args.target_episodes * args.target_frames
    ratio = n_target / n_now
    tokens_per_frame = json.loads((work / "acts" / "activations.json").read_text())["tokens_per_frame"]
    d = args.dim_model
    lines = [
        f"\nextrapolation to {args.target_episodes} episodes x {args.target_frames} frames = {n_target} frames "
        f"({ratio:.0f}x the {n_now} measured), this CPU:"
    ]
    rec = results["record-activations"]
    rec_s = rec["wall_s"] / n_now * n_target
    disk = n_target * tokens_per_frame * d * 2
    lines.append(
        f"  record-activations: {rec['wall_s']:.0f} s / {n_now} frames x {n_target} = {rec_s / 3600:.1f} h; "
        f"disk {n_target} x {tokens_per_frame} tokens x {d} x 2 B = {disk / GB:.1f} GB; memory bounded by "
        f"one shard (peak {rec['peak_rss_gb']:.2f} GB now, constant)"
    )
    sae_tok_s = float(json.loads((work / "sae" / "metrics.json").read_text()).get("tokens_per_s", 0.0))
    sae_s = args.target_sae_steps * 4096 / sae_tok_s if sae_tok_s else float("nan")
    lines.append(
        f"  train-sae: {sae_tok_s:.0f} tokens/s measured; {args.target_sae_steps} steps x 4096 tokens = "
        f"{sae_s / 3600:.1f} h (memory: a buffer of 8 shards, constant; "
        f"peak {results['train-sae']['peak_rss_gb']:.2f} GB)"
    )
    ref_full = per_ref_frame * n_target * (args.episodes - 1 + 1) / args.episodes  # train + calibration episodes
    ref_kept = min(ref_full, args.reference_max_gb * GB)
    fixed = small["peak_rss_gb"] * GB - small["reference"]["frames"] * per_ref_frame * max(fit_ratio, 1.0)
    cal_peak = fixed + max(fit_ratio, 1.0) * ref_kept
    forwards = full["reference"]["frames"] + args.frames
    cal_s = full["wall_s"] / forwards * (min(ref_full, ref_kept) / per_ref_frame + n_target / args.episodes)
    over = ref_full > ref_kept
    lines.append(
        f"  calibrate-ood patch_knn: reference {per_ref_frame / 1e6:.3f} MB/frame x {n_target} frames = "
        f"{ref_full / GB:.1f} GB {'>' if over else '<='} --reference-max-gb {args.reference_max_gb:g}: "
        f"{ref_kept / per_ref_frame:.0f} frames kept{' for coverage' if over else ''}; "
        f"peak RAM = {fixed / GB:.2f} GB fixed + "
        f"{max(fit_ratio, 1.0):.2f} x {ref_kept / GB:.1f} GB = {cal_peak / GB:.1f} GB; time about "
        f"{cal_s / 3600:.1f} h (forwards of the kept reference frames and the calibration frames)"
    )
    per_frame_s = {k: results[k]["wall_s"] / args.frames for k in ("evaluate-ood", "record-features", "replay")}
    for k, s in per_frame_s.items():
        lines.append(f"  {k}: {s:.2f} s/frame; constant memory (peak {results[k]['peak_rss_gb']:.2f} GB)")
    worst = max(
        [cal_peak] + [r["peak_rss_gb"] * GB for k, r in results.items() if k != "calibrate-ood" and "peak_rss_gb" in r]
    )
    lines.append(
        f"  largest peak: {worst / GB:.1f} GB: {'fits' if worst < args.memory_gb * GB else 'does NOT fit'} in "
        f"{args.memory_gb:g} GB"
    )
    lines.append(
        f"  GPU: record-activations ({rec_s / 3600:.1f} h here), train-sae ({sae_s / 3600:.1f} h here) and the "
        "patch_knn calibration are forward- or matmul-bound: run them on a GPU for a dataset of this size"
    )
    print("\n".join(lines))
    results["extrapolation"] = {
        "frames": n_target,
        "record_activations_h": rec_s / 3600,
        "activations_disk_gb": disk / GB,
        "train_sae_h": sae_s / 3600,
        "reference_gb": ref_full / GB,
        "reference_kept_gb": ref_kept / GB,
        "calibration_peak_gb": cal_peak / GB,
        "fit_ratio": fit_ratio,
        "cli_fit_ratio": cli_ratio,
        "runtime_anon_growth_per_mb": grow,
        "largest_peak_gb": worst / GB,
    }
    (work / "trainer_scale.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten {work / 'trainer_scale.json'}")


if __name__ == "__main__":
    main()
