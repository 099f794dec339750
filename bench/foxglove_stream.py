#!/usr/bin/env python
"""Foxglove live: how soon a client sees the channels and how each frame reaches it (named
foxglove_stream.py: a bench/foxglove.py would shadow the foxglove package).

A random ACT policy with two HxW cameras, a random SAE with OOD parameters, a LeRobot episode, a real
foxglove-sdk server and a real WebSocket client on 127.0.0.1 (tests/foxglove_client.py), in one process:
  replay : ``replay`` with --foxglove at batch 1 (its default) and at --batch-size: time from the start of
           the replay (pipeline loaded) to the client holding every channel and to the first frame, and the
           gaps between consecutive frames' arrivals (a batch sent at once shows as near-zero gaps)
  live   : ``FoxgloveLive`` in a control loop: the cost of ``log()`` in the loop, and the time from ``log()``
           to the client holding the frame (overlays rendered, CDR encoded, sent, received)
  cli    : with --cli, ``pai replay --foxglove`` as a process: time from its start to the advertisement
Ratios: the live part runs plain LeRobot inference (a fresh hook-free load, bench/plain.py) on every frame,
alternating before and after the pipeline, and prints (step + log) / plain, log / plain and step-to-client /
plain. The replay and cli parts print no ratio: time to the advertisement, to the first frame and the gaps
between arrivals measure the streaming path itself, which plain LeRobot has no counterpart of.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NS = "/pai_introspector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(x: float) -> str:
    return f"{1e3 * x:.1f} ms"


def bench_replay(pipeline, dataset, batch_size: int, out: Path) -> None:
    from pai_core.foxglove_live import output_topics
    from pai_core.replay.api import ReplayOptions, replay
    from pai_core.sources.accounting import Accounting
    from pai_core.sources.dataset import iter_episode
    from tests.foxglove_client import FoxgloveClient

    port = free_port()
    client = FoxgloveClient(port)
    options = ReplayOptions(out, batch_size=batch_size, video=False, mcap=False, foxglove_port=port, progress=False)
    t0 = time.monotonic()
    thread = threading.Thread(target=replay, args=(iter_episode(dataset, 0), pipeline, options, Accounting()))
    thread.start()
    n_topics = len(output_topics(pipeline))
    client.wait(lambda: len(client.topics()) == n_topics, 120, "the advertisement")
    advertised = max(client.advertised_at.values()) - t0
    thread.join()
    arrivals = np.array([m.at for m in client.on(f"{NS}/alarm")])
    gaps = np.diff(arrivals)
    print(
        f"replay batch {batch_size}: channels after {ms(advertised)}, first frame after {ms(arrivals[0] - t0)}, "
        f"{len(arrivals)} frames, gaps between frames median {ms(np.median(gaps))}, min {ms(gaps.min())}, "
        f"max {ms(gaps.max())}"
    )
    client.close()


def bench_live(pipeline, frames: int, plain) -> None:
    """``plain``: the hook-free LeRobot baseline (bench/plain.py), run on every frame's observation in
    alternating order with the pipeline (before it on odd frames, after the frame arrived on even ones)."""
    from pai_core.foxglove_live import FoxgloveConfig, FoxgloveLive, output_topics
    from tests.conftest import random_observation
    from tests.foxglove_client import FoxgloveClient

    def plain_inference(obs) -> float:
        t0 = time.monotonic()
        with torch.inference_mode():
            batch = plain.preprocessor(plain.to_lerobot(obs.images, obs.state))
            plain.postprocessor(plain.policy.predict_action_chunk(batch))
        return time.monotonic() - t0

    rng = np.random.default_rng(0)
    port = free_port()
    step_s, log_s, latency_s, plain_s = [], [], [], []
    with FoxgloveLive(pipeline, FoxgloveConfig(port=port)) as fox:
        client = FoxgloveClient(port)
        client.wait(lambda: len(client.topics()) == len(output_topics(pipeline)), 60, "the advertisement")
        client.wait(lambda: all(fox.server.watched(t) for t in client.topics()), 60, "the subscriptions")
        pipeline.reset()
        for i in range(frames):
            obs = random_observation(pipeline.engine, rng, t=0.1 * i)
            if i % 2:
                plain_s.append(plain_inference(obs))
            t0 = time.monotonic()  # the client stamps arrivals with the same clock
            frame = pipeline.step(obs)
            t1 = time.monotonic()
            fox.log(frame, time_ns=i)
            t2 = time.monotonic()
            client.wait(lambda i=i: len(client.on(f"{NS}/alarm")) > i, 60, f"frame {i}")
            step_s.append(t1 - t0)
            log_s.append(t2 - t1)
            latency_s.append(client.on(f"{NS}/alarm")[-1].at - t1)
            if not i % 2:
                plain_s.append(plain_inference(obs))
        client.close()

    def med(v):
        return ms(float(np.median(v)))

    def p90(v):
        return ms(float(np.percentile(v, 90)))

    print(
        f"live: Pipeline.step median {med(step_s)}; log() in the loop median {med(log_s)} (p90 {p90(log_s)}); "
        f"log() to the client holding the frame median {med(latency_s)} (p90 {p90(latency_s)}); "
        f"{fox.dropped} dropped"
    )
    base = float(np.median(plain_s))
    print(
        f"live vs plain LeRobot inference (median {med(plain_s)}, same frames, interleaved): "
        f"ratio Pipeline.step + log() / plain = {(np.median(np.add(step_s, log_s))) / base:.3f}, "
        f"log() / plain = {np.median(log_s) / base:.3f}, step to the client holding the frame / plain = "
        f"{np.median(np.add(step_s, latency_s)) / base:.3f}"
    )


def bench_cli(policy: Path, sae: Path, ds: Path, out: Path) -> None:
    from tests.foxglove_client import FoxgloveClient

    port = free_port()
    client = FoxgloveClient(port, connect_timeout=300)
    t0 = time.monotonic()
    cmd = [
        str(Path(sys.executable).with_name("pai")),
        "replay",
        "--dataset-repo-id",
        "bench/fox",
        "--root",
        str(ds),
        "--episodes",
        "0",
        "--policy-path",
        str(policy),
        "--sae-path",
        str(sae),
        "--output-dir",
        str(out),
        "--no-video",
        "--no-mcap",
        "--no-progress",
        "--foxglove",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client.wait(lambda: client.channels, 300, "the advertisement")
    advertised = min(client.advertised_at.values()) - t0
    client.wait(lambda: client.on(f"{NS}/alarm"), 300, "the first frame")
    first = client.on(f"{NS}/alarm")[0].at - t0
    proc.wait()
    print(
        f"cli: `pai replay --foxglove` start to channels {advertised:.2f} s (imports, policy and SAE loading), "
        f"to the first frame {first:.2f} s"
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--dim-model", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="the batched replay to compare with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli", action="store_true", help="also time `pai replay --foxglove` as a process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pai_core.pipeline import Pipeline
    from pai_core.sources.dataset import open_dataset
    from pai_core.testing import make_act_policy, make_lerobot_dataset
    from tests.replay_helpers import make_sae

    tmp = Path(tempfile.mkdtemp(prefix="pai-bench-foxglove-"))
    size = (args.height, args.width)
    cameras = {"observation.images.front": size, "observation.images.wrist": size}
    policy = make_act_policy(tmp / "policy", cameras=cameras, dim_model=args.dim_model)
    sae = make_sae(tmp / "sae", d_in=args.dim_model, threshold=1.0)
    make_lerobot_dataset(tmp / "ds", repo_id="bench/fox", cameras=cameras, episodes=1, frames=args.frames)
    dataset = open_dataset("bench/fox", tmp / "ds")
    pipeline = Pipeline.load(str(policy), str(sae))
    print(
        f"two {args.height}x{args.width} cameras, dim_model {args.dim_model}, {args.frames} frames, "
        f"{args.threads} threads"
    )
    for batch_size in (1, args.batch_size):
        bench_replay(pipeline, dataset, batch_size, tmp / f"out{batch_size}")
    from bench.plain import assert_no_hooks, load_plain

    plain = load_plain(str(policy))
    bench_live(pipeline, args.frames, plain)
    assert_no_hooks(plain.policy, "the plain LeRobot policy")
    if args.cli:
        bench_cli(policy, sae, tmp / "ds", tmp / "out_cli")


if __name__ == "__main__":
    main()
