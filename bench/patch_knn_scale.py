#!/usr/bin/env python
"""patch_knn at dataset size: reference memory and scoring time per frame, searched in blocks on the device.

A reference of N frames holds, per camera, N x C x H x W float16 patch features: with ACT's ResNet18 at
480x640, layer1 + layer2 give C = 192 channels on a 24 x 32 grid, 295 kB a frame and camera. Scoring a frame
is a joint-state search over the N reference states (the only part that grows with N; ``search_chunk``
reference frames at a time, so its distances take B x (chunk + k) floats instead of B x N) and the patch
distances to its ``k_frames`` nearest frames (independent of N). The reference is random (memory and time
do not depend on the values); the state search always runs at the full --episodes x --frames.

The whole score is timed interleaved with plain LeRobot inference (bench/timing.py) of an ACT at LeRobot's
defaults (dim_model 512, ResNet18) on the same number of 480x640 cameras, a fresh hook-free load
(bench/plain.py), and printed as a ratio per frame: what patch_knn adds to each frame's inference. The plain
side runs at the scored batch up to --plain-max-batch (default 1 on the CPU, where a 480x640 batch of 32
takes tens of seconds; its per-frame time then stands for the larger batches). The state-search and memory
figures print no ratio: they are parts of the score, with no plain-LeRobot counterpart.

    python bench/patch_knn_scale.py --device cuda                      # 50 episodes x 400 frames, 2 cameras
    python bench/patch_knn_scale.py --patch-episodes 5                 # CPU: patches of 5 episodes, extrapolated
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plain import assert_no_hooks  # noqa: E402
from bench.timing import interleave  # noqa: E402
from pai_core.ood.patch_knn import CameraReference, PatchKnnConfig, PatchKnnScorer, nearest_states  # noqa: E402

CHANNELS = (64, 128)  # ResNet18 layer1, layer2
GRID = (24, 32)  # PatchKnnConfig.max_grid: the patch grid of a 480x640 image


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, runs: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3)}


def joint_states(episodes: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 6) random-walk joint states, standardised, and (N,) episode ids."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(scale=0.05, size=(episodes, frames, 6)), axis=1).reshape(-1, 6)
    walk = (walk - walk.mean(0)) / walk.std(0)
    return torch.from_numpy(walk.astype(np.float32)), torch.arange(episodes).repeat_interleave(frames)


def plain_policy(cameras: int, h: int, w: int, device: torch.device):
    """(``run(b)``, the policy): plain LeRobot inference (preprocessor + ``predict_action_chunk`` +
    postprocessor) of b frames (converted from uint8 once), on a random-init ACT at LeRobot's defaults with
    ``cameras`` HxW cameras."""
    import tempfile

    from bench.plain import load_plain
    from pai_core.testing import make_act_policy

    cams = {f"observation.images.cam{i}": (h, w) for i in range(cameras)}
    path = make_act_policy(
        tempfile.mkdtemp() + "/p",
        cameras=cams,
        dim_model=512,
        n_heads=8,
        dim_feedforward=3200,
        n_encoder_layers=4,
        chunk_size=100,
        n_action_steps=100,
    )
    p = load_plain(str(path), str(device))
    rng = np.random.default_rng(0)
    frame = p.to_lerobot({k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k in cams}, np.zeros(6, np.float32))

    def run(b: int) -> object:
        with torch.inference_mode():
            batch = p.preprocessor({k: torch.stack([v] * b) for k, v in frame.items()})
            return p.postprocessor(p.policy.predict_action_chunk(batch))

    return run, p.policy


def build_scorer(n: int, cameras: int, states, episodes, device, chunk) -> PatchKnnScorer:
    c = sum(CHANNELS)
    refs = {}
    for i in range(cameras):
        patches = torch.empty((n, c, *GRID), dtype=torch.float16, device=device)
        for s in range(0, n, 256):  # filled a block at a time: no float32 copy of the whole reference
            patches[s : s + 256] = torch.randn((min(256, n - s), c, *GRID), device=device).half()
        refs[f"observation.images.cam{i}"] = CameraReference(
            patches, torch.zeros(c, 1, 1), torch.ones(c, 1, 1), torch.zeros(GRID), torch.ones(GRID), 1.0, 1.0
        ).to(device)
    return PatchKnnScorer(
        refs,
        states[:n],
        torch.zeros(6),
        torch.ones(6),
        episodes[:n],
        PatchKnnConfig(),
        coverage_radius=1.0,
        search_chunk=chunk,
    ).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--frames", type=int, default=400, help="frames per episode")
    parser.add_argument(
        "--patch-episodes",
        type=int,
        default=None,
        help="episodes whose patches are held (default: all on CUDA, 5 on the CPU; the rest is "
        "extrapolated: memory is linear in frames, patch distances do not depend on them)",
    )
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=8192, help="reference frames per block of the state search")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="frames scored per call")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--plain-max-batch", type=int, default=0, help="largest batch of the plain side (0: 32 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_full = args.episodes * args.frames
    patch_eps = args.patch_episodes or (args.episodes if device.type == "cuda" else min(5, args.episodes))
    n = patch_eps * args.frames
    states, episodes = joint_states(args.episodes, args.frames)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads}",
        "frames_full": n_full,
        "frames_held": n,
        "cameras": args.cameras,
        "chunk": args.chunk,
        "grid": [sum(CHANNELS), *GRID],
    }

    # the state search at full size: blocked and in one block, the same neighbours
    q_states = states[torch.randint(n_full, (max(args.batch),))].to(device)
    ref_states = states.to(device)
    search = {}
    for chunk in (None, args.chunk):
        for b in args.batch:
            ms = timed(lambda b=b, chunk=chunk: nearest_states(q_states[:b], ref_states, 32, chunk), device, args.runs)
            search[f"chunk_{chunk or 'none'}_batch_{b}"] = stats(ms) | {
                "distance_floats": b * (n_full if chunk is None else min(chunk, n_full) + 32)
            }
    same = all(
        torch.equal(x, y)
        for x, y in zip(
            nearest_states(q_states, ref_states, 32, None), nearest_states(q_states, ref_states, 32, args.chunk)
        )
    )
    report["state_search_full_size"] = search | {"blocked_equals_one_block": same}

    # the reference and the whole score (state search over the held frames + patch distances)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scorer = build_scorer(n, args.cameras, states, episodes, device, args.chunk)
    sync(device)
    build_s = time.perf_counter() - t0
    per_frame = scorer.nbytes / n
    report["reference"] = {
        "bytes_held": scorer.nbytes,
        "bytes_per_frame": int(per_frame),
        "bytes_full_size": int(per_frame * n_full),
        "full_size_is": "measured" if n == n_full else f"extrapolated from {n} frames (linear)",
        "build_s": round(build_s, 2),
    }
    h, w = 480, 640
    plain, plain_module = plain_policy(args.cameras, h, w, device)
    plain_max = args.plain_max_batch or (32 if device.type == "cuda" else 1)
    scoring = {}
    for b in args.batch:
        maps = {
            cam: [
                torch.randn(b, CHANNELS[0], h // 4, w // 4, device=device),
                torch.randn(b, CHANNELS[1], h // 8, w // 8, device=device),
            ]
            for cam in scorer.cameras
        }
        probe = states[torch.randint(n, (b,))].numpy()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        pb = min(b, plain_max)
        t = interleave(
            {
                "score": functools.partial(scorer.score_maps, maps, probe),
                "plain": functools.partial(plain, pb),
            },
            rounds=max(5, args.runs // (4 if b > 1 else 1)),
            warmup=2,
            sync=lambda: sync(device),
        )
        ms = t.ms["score"]
        plain_frame = t.median("plain") / pb
        row = stats(ms) | {
            "per_frame_ms": round(statistics.median(ms) / b, 3),
            "plain_lerobot_batch": pb,
            "plain_lerobot_per_frame_ms": round(plain_frame, 3),
            "ratio_score_per_frame_vs_plain": round(statistics.median(ms) / b / plain_frame, 4),
        }
        if device.type == "cuda":
            row["peak_extra_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        scoring[f"batch_{b}"] = row
    if device.type != "cuda":
        scoring["process_peak_rss_growth_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    report["score"] = scoring
    if n < n_full:
        extra = {}
        for b in args.batch:
            full = report["state_search_full_size"][f"chunk_{args.chunk}_batch_{b}"]["median_ms"]
            held = statistics.median(
                timed(lambda b=b: nearest_states(q_states[:b], ref_states[:n], 32, args.chunk), device, args.runs)
            )
            extra[f"batch_{b}_median_ms"] = round(scoring[f"batch_{b}"]["median_ms"] - held + full, 3)
        report["score_full_size_extrapolated"] = extra | {
            "how": "score at the held frames, with the state search over the held frames replaced by the one "
            "measured at full size (patch distances do not depend on the reference size)"
        }
    assert_no_hooks(plain_module, "the plain LeRobot policy (after the rounds)")
    print(json.dumps(report, indent=2))
    for b in args.batch:
        row = scoring[f"batch_{b}"]
        print(
            f"ratio patch_knn score / plain LeRobot inference per frame at batch {b}: "
            f"{row['ratio_score_per_frame_vs_plain']:.4f} ({row['per_frame_ms']} ms vs "
            f"{row['plain_lerobot_per_frame_ms']} ms at batch {row['plain_lerobot_batch']})",
            file=sys.stderr,  # stdout is the JSON (bench/gpu.py parses it)
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
