#!/usr/bin/env python
"""Replay throughput: frames/s of ``pai replay --bag`` against real time and against the batched plain forward.

Writes a rosbag2 (mcap) of two cameras (rgb8) at --rate Hz plus JointState, a random ACT policy and a
random SAE with OOD parameters, then measures, in one process, the two sides interleaved over --rounds
rounds (plain, replay, plain, replay, ...; a machine loaded by others slows both sides alike):
  plain  : policy.model(batch) on preprocessed batches of --batch-size (the bare batched forward), as many
           frames as the bag has
  replay : the whole replay (bag reading and decoding in a thread, Pipeline.step_batch, overlay videos,
           Parquet, MCAP with every node topic, report), end to end
Prints every round, the median frames/s of both, the ratio of the medians (and the median of the per-round
ratios), the CPU seconds each side spends a frame, replay speed as a multiple of real time, and the target:
replay at least 0.9x the batched plain
forward (issue 13 on the CPU; with --device cuda also issue 14's 580 frames/s at dim_model 512).

    python bench/replay.py                                  # CPU: 32 frames, batch 8, 5 rounds
    python bench/replay.py --device cuda                    # GPU: 960 frames (32 s at 30 Hz), batch 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help="frames of the driving camera (32 CPU, 960 CUDA)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in the bag (Hz)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--dim-model", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="frames per forward (8 CPU, 32 CUDA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each side (median reported)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be at least 1")
    on_cuda = args.device.startswith("cuda")
    args.frames = args.frames or (960 if on_cuda else 32)
    args.batch_size = args.batch_size or (32 if on_cuda else 8)
    torch.set_num_threads(args.threads)

    from pai_core.ood import OODParams
    from pai_core.pipeline import Pipeline
    from pai_core.replay.api import ReplayOptions, replay_bag
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from pai_core.settings import CameraSettings, PaiSettings
    from pai_core.testing import make_act_policy
    from tests import replay_helpers as rh

    tmp = Path(tempfile.mkdtemp(prefix="pai-bench-replay-"))
    cams = {
        "observation.images.front": (args.height, args.width),
        "observation.images.wrist": (args.height, args.width),
    }
    rh.CAMERAS.update(cams)
    policy = make_act_policy(
        tmp / "policy",
        cameras=cams,
        dim_model=args.dim_model,
        n_heads=8,
        dim_feedforward=4 * args.dim_model,
        n_encoder_layers=4,
        chunk_size=100,
        n_action_steps=100,
    )
    sae = SparseAutoencoder(SAEConfig(d_in=args.dim_model, expansion_factor=8, k=32))
    save_sae(sae, tmp / "sae")
    OODParams(threshold=1e9).save(tmp / "sae" / "ood_params.json")
    specs = [
        rh.CameraSpec("/front", "observation.images.front", args.rate, "rgb8"),
        rh.CameraSpec("/wrist", "observation.images.wrist", args.rate, "rgb8", 0.003),
    ]
    duration = args.frames / args.rate
    rh.write_bag(tmp / "bag", "mcap", specs, duration_s=duration, joint_rate_hz=2 * args.rate, joint_offset_s=-0.01)
    settings = PaiSettings(
        policy_path=str(policy),
        sae_path=str(tmp / "sae"),
        device=args.device,
        joint_names=rh.JOINTS,
        cameras=CameraSettings([s.topic for s in specs], [s.feature for s in specs]),
    )
    pipeline = Pipeline.from_settings(settings)

    # plain batched forward on the same batch size and the same number of frames as the replay
    engine = pipeline.engine
    rng = np.random.default_rng(0)
    from pai_core import Observation

    obs = [
        Observation(
            images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in cams.items()},
            state=rng.normal(size=6).astype(np.float32),
        )
        for _ in range(args.batch_size)
    ]
    batch = engine._preprocess(obs)
    model_batch = dict(batch)
    model_batch["observation.images"] = [batch[k] for k in engine.camera_names]
    reps = max(1, args.frames // args.batch_size)

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    def plain() -> tuple[float, float]:
        """(frames/s, CPU seconds a frame: every thread of the process)."""
        with torch.inference_mode():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                engine.policy.model(model_batch)
            sync()
            n = reps * args.batch_size
            return n / (time.perf_counter() - t0), (time.process_time() - c0) / n

    def replay(i: int):
        options = ReplayOptions(tmp / f"out_{i}", batch_size=args.batch_size, video=not args.no_video, progress=False)
        return replay_bag(tmp / "bag", settings, pipeline, options)

    with torch.inference_mode():
        for _ in range(3 if on_cuda else 1):  # warm-up (cuDNN picks its algorithms on the first calls)
            engine.policy.model(model_batch)
    replay(-1)  # warm-up: first calls of the encoders and writers
    plain_fps, replay_fps, pipeline_fps, ratios, plain_cpu, replay_cpu = [], [], [], [], [], []
    result = None
    for i in range(args.rounds):
        fps, cpu = plain()
        plain_fps.append(fps)
        plain_cpu.append(cpu)
        c0 = time.process_time()
        result = replay(i)
        s = result.stats
        replay_cpu.append((time.process_time() - c0) / max(1, s.frames))  # with the report, after the timed run
        replay_fps.append(s.fps)
        pipeline_fps.append(s.frames / s.pipeline_s)
        ratios.append(replay_fps[-1] / plain_fps[-1])
        print(
            f"round {i + 1}: plain {plain_fps[-1]:8.2f} frames/s ({plain_cpu[-1]:.2f} CPU s/frame), replay "
            f"{replay_fps[-1]:8.2f} ({replay_cpu[-1]:.2f} CPU s/frame), {ratios[-1]:.2f}x"
        )
    assert result is not None
    plain_med, replay_med = float(np.median(plain_fps)), float(np.median(replay_fps))
    ratio = replay_med / plain_med
    print(
        f"device {args.device}, {args.threads} threads, two {args.height}x{args.width} cameras, dim_model "
        f"{args.dim_model}, batch {args.batch_size}, {result.accounting.frames_processed} frames at {args.rate:g} Hz, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(f"plain batched forward : {plain_med:8.2f} frames/s")
    print(
        f"replay end to end     : {replay_med:8.2f} frames/s  ({replay_med / args.rate:.2f}x real time; pipeline "
        f"alone {float(np.median(pipeline_fps)):.2f} frames/s)"
    )
    print(f"ratio replay / plain  : {ratio:.3f} (median of the rounds' ratios {float(np.median(ratios)):.3f})")
    print(
        f"CPU time a frame      : plain {float(np.median(plain_cpu)):.3f} s, replay "
        f"{float(np.median(replay_cpu)):.3f} s (every thread; replay's includes writing the report): the work "
        "a loaded machine cannot hide by overlap"
    )
    target = f"target: replay >= 0.9x plain: {'yes' if ratio >= 0.9 else 'NO'} ({ratio:.2f}x)"
    if on_cuda:
        target += (
            f"; >= 580 frames/s at dim_model 512: {'yes' if replay_med >= 580 else 'NO'} ({replay_med:.0f}); "
            f"{torch.cuda.get_device_name()}"
        )
    print(target)
    print(f"outputs in {tmp}")


if __name__ == "__main__":
    main()
