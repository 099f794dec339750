#!/usr/bin/env python
"""End-to-end benchmark of the live node: camera message in -> overlay message out.

Starts the node as users do (``python -m pai.introspect_node --ros-args --params-file``) with a random-init
ACT (+ random SAE, threshold out of reach so the alarm never stops actions), publishes N cameras and
joint states at --hz with the current time as header stamp, and measures per frame the time from
publishing to receiving its overlay, and to receiving its joint command (stamped like the input and
published last, so every output of the frame is out). Reports median/p99 latency of both, drops (frames
published without an overlay / a command, and the node's own superseded count), node throughput, the
plain LeRobot inference of the same policy in this process (a fresh hook-free load: preprocessor +
``predict_action_chunk`` + postprocessor, eager), interleaved with ``Pipeline.step`` and measured in the same
run, the ratios of the node's median and p99 latency (and of ``Pipeline.step``) to it, whether the node's
engine replays a CUDA graph, and the node's CPU use. The node side cannot interleave with the plain side
frame by frame (it runs in its own process at the camera rate); the plain side is measured just before it.

    source scripts/test_env.sh
    .venv/bin/python bench/node.py --seconds 20 --hz 10 --height 96 --width 128
    .venv/bin/python bench/node.py --height 480 --width 640 --hz 30 --dim-model 512 --device cuda --seconds 60
                                   # the GPU target: p99 <= 10 ms to every output, no drop, for 60 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pai_core.observation import camera_short  # noqa: E402 (needs the checkout on sys.path)


def build_models(out: Path, args) -> dict:
    from pai_core.ood import OODParams
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from pai_core.testing import make_act_policy

    cams = {f"observation.images.cam{i}": (args.height, args.width) for i in range(args.cameras)}
    big = args.dim_model >= 256
    policy = make_act_policy(
        out / "policy",
        cameras=cams,
        dim_model=args.dim_model,
        n_heads=8 if big else 4,
        dim_feedforward=3200 if big else 128,
        n_encoder_layers=4 if big else 2,
        chunk_size=100 if big else 10,
        n_action_steps=100 if big else 10,
    )
    save_sae(SparseAutoencoder(SAEConfig(d_in=args.dim_model, expansion_factor=8, k=32)), out / "sae")
    OODParams(threshold=1e30).save(out / "sae" / "ood_params.json")
    return {"policy": str(policy), "sae": str(out / "sae"), "cams": cams}


def plain_forward_ms(models: dict, args, runs: int = 30) -> tuple[float, float, str]:
    """Median ms of plain LeRobot inference (preprocessor + ``predict_action_chunk`` + postprocessor from uint8
    images, on a fresh hook-free load: bench/plain.py) and of ``Pipeline.step`` on the same inputs, interleaved
    (bench/timing.py), and how the engine runs ``step`` (``graph.status``: a CUDA graph replay or eager)."""
    import torch

    from bench.plain import assert_no_hooks, load_plain
    from bench.timing import interleave
    from pai_core.observation import Observation
    from pai_core.pipeline import Pipeline
    from pai_core.testing import synthetic_frame

    torch.set_num_threads(args.threads)
    plain_p = load_plain(models["policy"], args.device)
    pipe = Pipeline.load(models["policy"], models["sae"], device=args.device)
    obs = Observation(
        {k: synthetic_frame(h, w, 0.3) for k, (h, w) in models["cams"].items()}, state=np.zeros(6, np.float32)
    )

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain() -> object:
        with torch.inference_mode():
            batch = plain_p.preprocessor(plain_p.to_lerobot(obs.images, obs.state))
            return plain_p.postprocessor(plain_p.policy.predict_action_chunk(batch))

    t = interleave({"plain": plain, "pipeline": lambda: pipe.step(obs)}, rounds=runs, warmup=3, sync=sync)
    assert_no_hooks(plain_p.policy, "the plain LeRobot policy (after the rounds)")
    return t.median("plain"), t.median("pipeline"), pipe.engine.graph.status.describe()


def write_params(path: Path, models: dict, args) -> None:
    doc = yaml.safe_load((ROOT / "config" / "introspect.yaml").read_text())
    p = doc["/**"]["ros__parameters"]
    p.update(
        policy_path=models["policy"],
        sae_path=models["sae"],
        device=args.device,
        rate_hz=float(args.rate),
        joint_states_topic="/bench/joint_states",
        stale_timeout_s=30.0,
    )
    p["cameras"] = {
        "topics": [f"/bench/{camera_short(k)}/image_raw" for k in models["cams"]],
        "features": list(models["cams"]),
    }
    p["safe_stop"] = {"service": ""}
    path.write_text(yaml.safe_dump(doc))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_node_bench(models: dict, args, params: Path) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from tqdm import tqdm

    from pai_core.testing import synthetic_frame

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT / "ros2_ws" / "src" / "pai"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
        OMP_NUM_THREADS=str(args.threads),
    )
    log = open(params.with_suffix(".log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pai.introspect_node", "--ros-args", "--params-file", str(params)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ctx = Context()
    rclpy.init(context=ctx)
    node = Node("pai_bench", context=ctx)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    latencies_all: list[float] = []  # to the joint command: the frame's last output
    diag: dict = {}
    lock = threading.Lock()
    first = camera_short(next(iter(models["cams"])))

    def on_overlay(msg):
        now = time.perf_counter()
        ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            if ns in sent:
                latencies.append((now - sent[ns]) * 1000)

    def on_command(msg):
        now = time.perf_counter()
        ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with lock:
            if ns in sent:
                latencies_all.append((now - sent.pop(ns)) * 1000)

    def on_diag(msg):
        for status in msg.status:
            diag[status.name] = {kv.key: kv.value for kv in status.values}

    from diagnostic_msgs.msg import DiagnosticArray

    node.create_subscription(
        Image,
        f"/pai_introspector/overlay/{first}",
        on_overlay,
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
    )
    node.create_subscription(
        JointState,
        "/pai_introspector/joint_command",
        on_command,
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
    )
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    cams = {k: node.create_publisher(Image, f"/bench/{camera_short(k)}/image_raw", qos) for k in models["cams"]}
    joints = node.create_publisher(JointState, "/bench/joint_states", qos)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    images = {k: [synthetic_frame(h, w, t / 10) for t in range(10)] for k, (h, w) in models["cams"].items()}
    try:
        end = time.monotonic() + 180
        while not all(p.get_subscription_count() for p in cams.values()) and time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        warmup, published = 10, 0
        names = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
        cpu0 = wall0 = None
        total = warmup + int(args.seconds * args.hz)
        for i in tqdm(range(total), desc="publishing", unit="frame"):
            t_next = time.perf_counter() + 1.0 / args.hz
            if i == warmup:
                with lock:
                    latencies.clear()
                    latencies_all.clear()
                    sent.clear()
                cpu0, wall0, published = cpu_seconds(proc.pid), time.perf_counter(), 0
            ns = time.time_ns()
            stamp = (ns // 1_000_000_000, ns % 1_000_000_000)
            js = JointState(name=names, position=[0.0] * 6)
            js.header.stamp.sec, js.header.stamp.nanosec = stamp
            msgs = []
            for k, frames in images.items():
                img = frames[i % len(frames)]
                m = Image(height=img.shape[0], width=img.shape[1], encoding="rgb8", step=img.shape[1] * 3)
                m.data = img.tobytes()
                m.header.stamp.sec, m.header.stamp.nanosec = stamp
                msgs.append((cams[k], m))
            joints.publish(js)
            with lock:
                sent[ns] = time.perf_counter()
            for pub, m in reversed(msgs):  # the first camera last
                pub.publish(m)
            published += 1
            time.sleep(max(0.0, t_next - time.perf_counter()))
        time.sleep(2.0)
        wall = time.perf_counter() - wall0
        cpu = cpu_seconds(proc.pid) - cpu0
        time.sleep(1.2)  # one more diagnostics message
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        executor.shutdown()
        spin.join(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    lat, lat_all = sorted(latencies), sorted(latencies_all)
    inputs = diag.get("pai_introspector: inputs", {})
    return {
        "published": published,
        "overlays": len(lat),
        "dropped": published - len(lat),
        "commands": len(lat_all),
        "dropped_before_last_output": published - len(lat_all),
        "node_superseded": inputs.get("superseded (dropped)", ""),
        "latency_ms_median": round(statistics.median(lat), 2) if lat else None,
        "latency_ms_p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
        "latency_all_outputs_ms_median": round(statistics.median(lat_all), 2) if lat_all else None,
        "latency_all_outputs_ms_p99": round(lat_all[min(len(lat_all) - 1, int(0.99 * len(lat_all)))], 2)
        if lat_all
        else None,
        "node_fps": round(len(lat) / wall, 2),
        "node_cpu_percent": round(100 * cpu / wall, 1),
        "node_engine_latency_ms_median": diag.get("pai_introspector: engine", {}).get("latency_ms_median"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--dim-model", type=int, default=64)
    parser.add_argument("--hz", type=float, default=10.0, help="camera publishing rate")
    parser.add_argument("--rate", type=float, default=0.0, help="node rate_hz (default: --hz)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    args.rate = args.rate or args.hz
    if not os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds_loopback.xml")
    work = Path(tempfile.mkdtemp(prefix="pai-bench-node-"))
    models = build_models(work, args)
    plain_ms, pipeline_ms, graph = plain_forward_ms(models, args)
    write_params(work / "introspect.yaml", models, args)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "plain_forward_ms": round(plain_ms, 2),
        "plain_forward_fps": round(1000 / plain_ms, 1),
        "pipeline_step_ms": round(pipeline_ms, 2),
        "engine_step": graph,
        **run_node_bench(models, args, work / "introspect.yaml"),
    }
    p99 = result["latency_all_outputs_ms_p99"]
    median = result["latency_all_outputs_ms_median"]
    result["ratios_vs_plain_lerobot"] = {  # the baseline measured above, in this run, hook-free
        "pipeline_step": round(pipeline_ms / plain_ms, 3),
        "node_latency_median": round(median / plain_ms, 3) if median else None,
        "node_latency_p99": round(p99 / plain_ms, 3) if p99 else None,
    }
    result["targets"] = {  # issue 14's live target, for two 480x640 cameras at 30 Hz for 60 s on a GPU
        "p99_all_outputs_le_10ms": p99 is not None and p99 <= 10.0,
        "no_frame_dropped": result["dropped_before_last_output"] == 0,
        "live_p99_over_eager_plain_forward": round(p99 / plain_ms, 3) if p99 else None,
    }
    print(json.dumps(result, indent=2))
    r = result["ratios_vs_plain_lerobot"]
    print(
        f"ratio node latency (camera in -> last output) / plain LeRobot inference: median {r['node_latency_median']}"
        f", p99 {r['node_latency_p99']}; Pipeline.step / plain {r['pipeline_step']} (plain {plain_ms:.2f} ms)",
        file=sys.stderr,  # stdout is the JSON (bench/gpu.py parses it)
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
