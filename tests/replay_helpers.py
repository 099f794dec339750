"""Builders for the replay tests: real rosbag2 recordings (rosbags Writer), a settings file, an SAE."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pai_core.testing import synthetic_frame

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


@dataclass
class CameraSpec:
    topic: str
    feature: str
    rate_hz: float
    kind: str  # "rgb8", "bgr8" (sensor_msgs/Image) or "jpeg" (CompressedImage)
    offset_s: float = 0.0


@dataclass
class Recording:
    """What was written, so tests can compute expectations independently of the replay code."""

    path: Path
    images: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # topic -> (stamp ns, rgb)
    joints: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (stamp ns, state in policy order)


def write_bag(
    path: Path,
    storage: str,
    cameras: list[CameraSpec],
    duration_s: float = 2.0,
    joint_rate_hz: float = 25.0,
    joint_offset_s: float = 0.0,
    start_s: float = 100.0,
) -> Recording:
    """A rosbag2 folder with camera and JointState messages, log time = header stamp."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    rec = Recording(path)
    events = []  # (t_ns, order, topic, msgtype, msg)
    rng = np.random.default_rng(0)
    for cam_i, cam in enumerate(cameras):
        h, w = CAMERAS[cam.feature]
        rec.images[cam.topic] = []
        n = int(duration_s * cam.rate_hz)
        for i in range(n):
            t_ns = int(round((start_s + cam.offset_s + i / cam.rate_hz) * 1e9))
            rgb = synthetic_frame(h, w, i / max(n - 1, 1), seed=cam_i * 1000 + i)
            stamp = T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
            header = T["std_msgs/msg/Header"](stamp=stamp, frame_id=cam.topic)
            if cam.kind == "jpeg":
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=buf.reshape(-1))
                # What any reader decodes (the replay must see exactly these pixels).
                rgb = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                mtype = "sensor_msgs/msg/CompressedImage"
            else:
                pixels = rgb if cam.kind == "rgb8" else rgb[..., ::-1]
                msg = T["sensor_msgs/msg/Image"](
                    header=header,
                    height=h,
                    width=w,
                    encoding=cam.kind,
                    is_bigendian=0,
                    step=w * 3,
                    data=np.ascontiguousarray(pixels).reshape(-1),
                )
                mtype = "sensor_msgs/msg/Image"
            rec.images[cam.topic].append((t_ns, rgb))
            events.append((t_ns, cam_i, cam.topic, mtype, msg))
    order = [4, 0, 5, 2, 1, 3]  # the message lists joints in another order than the policy
    for i in range(int(duration_s * joint_rate_hz)):
        t_ns = int(round((start_s + joint_offset_s + i / joint_rate_hz) * 1e9))
        state = rng.normal(size=6).astype(np.float64)
        msg = T["sensor_msgs/msg/JointState"](
            header=T["std_msgs/msg/Header"](
                stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=""
            ),
            name=[JOINTS[j] for j in order],
            position=state[order],
            velocity=np.zeros(6),
            effort=np.zeros(6),
        )
        rec.joints.append((t_ns, state.astype(np.float32)))
        events.append((t_ns, 99, "/joint_states", "sensor_msgs/msg/JointState", msg))
    events.sort(key=lambda e: (e[0], e[1]))
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for t_ns, _o, topic, mtype, msg in events:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, mtype, typestore=ts)
            writer.write(conns[topic], t_ns, bytes(ts.serialize_cdr(msg, mtype)))
    return rec


def write_settings(
    path: Path, cameras: list[CameraSpec], policy: Path, sae: Path | None = None, max_age_s: float = 0.5
) -> Path:
    import yaml

    params = {
        "policy_path": str(policy),
        "sae_path": str(sae) if sae else "",
        "device": "cpu",
        "cameras": {"topics": [c.topic for c in cameras], "features": [c.feature for c in cameras]},
        "joint_states_topic": "/joint_states",
        "joint_names": JOINTS,
        "max_input_age_s": max_age_s,
        "alarm": {"n": 2, "m": 3, "latch": True, "clear_after": 10},
    }
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


def make_sae(out: Path, d_in: int = 64, threshold: float | None = None) -> Path:
    """A random TopK SAE (real weights file) and its ood_params.json."""
    import torch

    from pai_core.ood import OODParams
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, expansion_factor=4, k=8, aux_k=16))
    save_sae(sae, out)
    if threshold is not None:
        OODParams(threshold=threshold, alpha=0.1, n_calibration=10).save(out / "ood_params.json")
    return out


def expected_frames(
    rec: Recording, driving: str, max_age_s: float
) -> list[tuple[int, dict[str, np.ndarray], np.ndarray]]:
    """Independent reference of bag assembly: for each driving frame, the newest message of every other
    input logged at or before it, kept when all exist and their stamps lie within max_age_s."""
    out = []
    others = [t for t in rec.images if t != driving]
    for t_ns, rgb in rec.images[driving]:
        picks = {driving: (t_ns, rgb)}
        for topic in others:
            before = [m for m in rec.images[topic] if m[0] <= t_ns]
            if before:
                picks[topic] = before[-1]
        joints = [j for j in rec.joints if j[0] <= t_ns]
        if len(picks) < len(rec.images) or not joints:
            continue
        stamps = [p[0] for p in picks.values()] + [joints[-1][0]]
        if (max(stamps) - min(stamps)) / 1e9 > max_age_s:
            continue
        out.append((max(stamps), {k: v[1] for k, v in picks.items()}, joints[-1][1]))
    return out
