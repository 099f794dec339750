"""Simulated episodes as rosbag2 recordings (MCAP storage) with the topics a real SO-101 setup has:
``sensor_msgs/Image`` (rgb8) from the front camera and ``sensor_msgs/JointState``.

Written with ``rosbags`` (no ROS install needed); ``pai replay --bag`` and the ROS node read them as
they would read a bag recorded on a robot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ObservationError, UsageError

IMAGE_TOPIC = "/camera/front/image_raw"
JOINT_TOPIC = "/joint_states"
FRAME_ID = "front_camera"
# Bags start at this wall time (2025-01-01T00:00:00Z) so replays are reproducible.
START_NS = 1_735_689_600 * 1_000_000_000


@dataclass
class BagFrame:
    """One control step: the camera image and the joints at ``timestamp`` seconds into the episode."""

    timestamp: float
    image: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None = None


def write_bag(
    path: str | Path,
    frames: Iterable[BagFrame],
    joint_names: list[str],
    image_topic: str = IMAGE_TOPIC,
    joint_topic: str = JOINT_TOPIC,
) -> int:
    """Write ``frames`` to a new rosbag2 folder at ``path``; returns the number of frames written."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if path.exists():
        raise UsageError(f"Bag {path} already exists; choose a new path or delete it")
    path.parent.mkdir(parents=True, exist_ok=True)
    store = get_typestore(Stores.ROS2_KILTED)
    Image = store.types["sensor_msgs/msg/Image"]
    JointState = store.types["sensor_msgs/msg/JointState"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    count = 0
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image_conn = writer.add_connection(image_topic, Image.__msgtype__, typestore=store)
        joint_conn = writer.add_connection(joint_topic, JointState.__msgtype__, typestore=store)
        for frame in frames:
            stamp_ns = START_NS + int(round(frame.timestamp * 1e9))
            stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
            img = np.ascontiguousarray(frame.image, dtype=np.uint8)
            if img.ndim != 3 or img.shape[2] != 3:
                raise ObservationError(
                    f"Bag frame at {frame.timestamp:.3f}s: expected an (H, W, 3) RGB image, got {img.shape}"
                )
            # Joints first: a camera frame then finds the joint state of its own instant.
            positions = np.asarray(frame.positions, dtype=np.float64)
            velocities = (
                np.zeros_like(positions) if frame.velocities is None else np.asarray(frame.velocities, dtype=np.float64)
            )
            joints = JointState(
                header=Header(stamp=stamp, frame_id=""),
                name=list(joint_names),
                position=positions,
                velocity=velocities,
                effort=np.zeros_like(positions),
            )
            writer.write(joint_conn, stamp_ns, store.serialize_cdr(joints, JointState.__msgtype__))
            h, w = img.shape[:2]
            msg = Image(
                header=Header(stamp=stamp, frame_id=FRAME_ID),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=w * 3,
                data=img.reshape(-1),
            )
            writer.write(image_conn, stamp_ns, store.serialize_cdr(msg, Image.__msgtype__))
            count += 1
    return count
