"""ROS message <-> numpy conversion shared by the live node and bag replay. Never imports rclpy.

Inputs are duck-typed: the functions read attributes only, so rclpy messages and messages deserialized
by ``rosbags`` both work. Outputs are described message-type-agnostically (``OutputMessage``: topic,
ROS type name, nested field dict), so the node (rclpy) and replay's MCAP writer (rosbags) publish the
same values through generic conversion only (``to_rosbags`` here; ``pai.ros_msgs.to_rclpy`` in the node).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from . import topics
from .errors import MessageError
from .overlay import OverlayConfig, render_overlays

#: encodings accepted on sensor_msgs/Image (anything rosbags.image can turn into rgb8 also works).
COMMON_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
#: sensor_msgs/CompressedImage formats accepted (image_transport writes e.g. "rgb8; jpeg compressed bgr8").
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
JPEG_QUALITY = 85
#: the next action in the robot's units, as sensor_msgs/JointState with the joint names (a position command that
#: topic_based_ros2_control and similar drivers take); not published while the alarm holds.


# ---------------------------------------------------------------------------------------------- inputs
def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> float seconds."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec), exactly."""
    return int(ns) // 1_000_000_000, int(ns) % 1_000_000_000


def sec_to_stamp(t: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec) with 0 <= nanosec < 1e9."""
    ns = int(round(t * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000


def _as_bytes(data: Any) -> np.ndarray:
    """uint8[] field (numpy array from rosbags, array.array or bytes from rclpy, list) -> uint8 view."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8, 16-bit, bayer...) or CompressedImage (jpeg,
    png) -> contiguous RGB uint8 array of shape (H, W, 3).

    Raises ``MessageError`` naming the encoding/format and size when the message cannot be decoded.
    """
    if _is_compressed(msg):
        return _compressed_to_rgb(msg)
    from rosbags.image.image import ImageError, convert_color, to_cvtype

    encoding = str(msg.encoding)
    try:
        bits, _fmt, typestr, nchan = to_cvtype(encoding)
    except ImageError:
        raise MessageError(
            f"Image encoding {encoding!r} is not supported; expected one of "
            f"{', '.join(COMMON_ENCODINGS)} (or another sensor_msgs encoding)"
        ) from None
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(typestr).itemsize
    row = width * nchan * itemsize
    data = _as_bytes(msg.data)
    if height <= 0 or width <= 0:
        raise MessageError(f"Image {width}x{height} ({encoding}) is empty")
    if step < row:
        raise MessageError(f"Image {width}x{height} {encoding}: step {step} is smaller than a row ({row} bytes)")
    if data.size < step * (height - 1) + row:
        raise MessageError(
            f"Image {width}x{height} {encoding} (step {step}) needs {step * height} bytes of data, got {data.size}"
        )
    rows = np.lib.stride_tricks.as_strided(data, shape=(height, row), strides=(step, 1))
    dtype = np.dtype(typestr).newbyteorder(">" if int(msg.is_bigendian) else "<")
    shape = (height, width) if nchan == 1 else (height, width, nchan)
    img = np.ascontiguousarray(rows).view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    try:
        rgb = convert_color(img, encoding, "rgb8")
    except ImageError as exc:
        raise MessageError(f"Image encoding {encoding!r} cannot be converted to rgb8: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MessageError(f"Image encoding {encoding!r} gave shape {rgb.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _compressed_to_rgb(msg: Any) -> np.ndarray:
    fmt = str(msg.format).lower()
    if fmt and not any(f in fmt for f in COMPRESSED_FORMATS):
        raise MessageError(f"CompressedImage format {msg.format!r} is not supported; expected jpeg or png")
    data = _as_bytes(msg.data)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise MessageError(f"CompressedImage ({msg.format!r}, {data.size} bytes) could not be decoded as jpeg/png")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def joint_state_to_vector(msg: Any, joint_names: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> float32 positions in ``joint_names`` order (the message may list joints in
    any order and carry extra joints).

    Raises ``MessageError`` when names and positions differ in length, a configured joint is missing, or a
    needed position is not finite.
    """
    names = [str(n) for n in msg.name]
    position = np.asarray(msg.position, dtype=np.float64).reshape(-1)
    if len(names) != position.size:
        raise MessageError(f"JointState has {len(names)} names but {position.size} positions; they must match")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise MessageError(f"JointState is missing joints {missing}; expected {list(joint_names)}, got {names}")
    out = position[[index[n] for n in joint_names]]
    bad = [n for n, v in zip(joint_names, out) if not math.isfinite(v)]
    if bad:
        raise MessageError(f"JointState positions of {bad} are not finite: {dict(zip(joint_names, out.tolist()))}")
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------- outputs
@dataclass
class OutputMessage:
    """One message to publish or record, independent of rclpy / rosbags.

    Args:
        topic: topic relative to the node ("~/overlay/front"; ``pai_core.topics.resolve`` gives the absolute
            name replay writes) or absolute ("/diagnostics").
        msgtype: ROS type name, e.g. "sensor_msgs/msg/Image".
        fields: the message's fields as a nested dict; arrays are numpy, sub-messages dicts, sequences of
            sub-messages lists of dicts; unset fields keep the type's defaults.
        stamp: seconds of the input observation (header stamp, and the log time replay uses).
    """

    topic: str
    msgtype: str
    fields: dict[str, Any] = field(default_factory=dict)
    stamp: float = 0.0


def header(stamp: tuple[int, int], frame_id: str = "") -> dict:
    return {"stamp": {"sec": int(stamp[0]), "nanosec": int(stamp[1])}, "frame_id": frame_id}


def image_fields(rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = "") -> dict:
    h, w = rgb.shape[:2]
    return {
        "header": header(stamp, frame_id),
        "height": h,
        "width": w,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": w * 3,
        "data": np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1),
    }


def compressed_fields(rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = "", quality: int = JPEG_QUALITY) -> dict:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MessageError(f"JPEG encoding of a {rgb.shape} overlay failed")
    return {"header": header(stamp, frame_id), "format": "jpeg", "data": buf.reshape(-1)}


def joint_state_fields(names: Sequence[str], positions: np.ndarray, stamp: tuple[int, int]) -> dict:
    """sensor_msgs/JointState with positions only (velocity and effort left empty)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    if positions.size != len(names):
        raise MessageError(f"JointState of {len(names)} joints {list(names)} cannot carry {positions.size} positions")
    return {"header": header(stamp), "name": [str(n) for n in names], "position": positions}


@dataclass
class JointCommand:
    """The next action in the robot's units, named by joint (``topics.JOINT_COMMAND``)."""

    names: list[str]
    positions: np.ndarray


def multiarray_fields(values: np.ndarray, labels: Sequence[str]) -> dict:
    """std_msgs/Float32MultiArray with one labelled dimension per axis (row-major strides)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    dims, stride = [], int(values.size)
    for label, size in zip(labels, values.shape, strict=True):
        dims.append({"label": label, "size": int(size), "stride": stride})
        stride = stride // max(int(size), 1)
    return {"layout": {"dim": dims, "data_offset": 0}, "data": values.reshape(-1)}


def frame_messages(
    frame: Any,
    pipeline: Any,
    overlay_config: OverlayConfig | None = None,
    compressed: bool = True,
    actions: bool = True,
    stamp: tuple[int, int] | None = None,
    command: JointCommand | None = None,
    overlays: Mapping[str, np.ndarray] | None = None,
) -> list[OutputMessage]:
    """Every output of one pipeline ``Frame``: overlays (Image, and CompressedImage jpeg when
    ``compressed``), attention shares, features, OOD score and threshold, alarm, and, when ``actions`` and
    the frame's alarm is not active, the next action and the action chunk (policy units) and ``command``.

    Args:
        stamp: exact (sec, nanosec) of the input header; default the observation's ``stamp_ns`` (integer
            nanoseconds, exact), else its ``timestamp`` in seconds.
        command: the next action in the robot's units, published on ``topics.JOINT_COMMAND`` as sensor_msgs/JointState.
        overlays: the frame's overlays (camera -> RGB) when the caller already rendered them with
            ``overlay_config`` (replay renders once for its videos and its messages).
    """
    obs, result = frame.observation, frame.result
    t = float(obs.timestamp)
    if stamp is None:
        stamp = ns_to_stamp(obs.stamp_ns) if obs.stamp_ns is not None else sec_to_stamp(t)
    out: list[OutputMessage] = []
    if overlays is None:
        overlays = render_overlays(obs, result, overlay_config or OverlayConfig())
    for camera, rgb in overlays.items():
        short = topics.camera_short(camera)
        out.append(
            OutputMessage(
                topics.OVERLAY.format(camera=short), "sensor_msgs/msg/Image", image_fields(rgb, stamp, short), t
            )
        )
        if compressed:
            out.append(
                OutputMessage(
                    topics.OVERLAY_COMPRESSED.format(camera=short),
                    "sensor_msgs/msg/CompressedImage",
                    compressed_fields(rgb, stamp, short),
                    t,
                )
            )
    share_labels = ["latent", "state"] + [topics.camera_short(c.name) for c in result.layout.cameras]
    shares = [result.latent_share, result.state_share] + [
        result.camera_share.get(c.name, 0.0) for c in result.layout.cameras
    ]
    out.append(
        OutputMessage(
            topics.ATTENTION_SHARE,
            "std_msgs/msg/Float32MultiArray",
            multiarray_fields(np.asarray(shares), [",".join(share_labels)]),
            t,
        )
    )
    if frame.features is not None:
        out.append(
            OutputMessage(
                topics.FEATURES,
                "std_msgs/msg/Float32MultiArray",
                multiarray_fields(np.asarray(frame.features), ["features"]),
                t,
            )
        )
    if frame.ood_score is not None:
        out.append(OutputMessage(topics.OOD_SCORE, "std_msgs/msg/Float32", {"data": float(frame.ood_score)}, t))
    if frame.threshold is not None:
        out.append(OutputMessage(topics.OOD_THRESHOLD, "std_msgs/msg/Float32", {"data": float(frame.threshold)}, t))
    thresholds = pipeline.signal_thresholds()
    for name, value in frame.signals.items():  # further signals, each on a topic of its own
        out.append(OutputMessage(topics.SIGNAL.format(name=name), "std_msgs/msg/Float32", {"data": float(value)}, t))
        if name in thresholds:
            out.append(
                OutputMessage(
                    topics.SIGNAL_THRESHOLD.format(name=name),
                    "std_msgs/msg/Float32",
                    {"data": float(thresholds[name])},
                    t,
                )
            )
    out.append(OutputMessage(topics.ALARM, "std_msgs/msg/Bool", {"data": bool(frame.alarm.active)}, t))
    if actions and not frame.alarm.active:
        out.append(
            OutputMessage(
                topics.ACTION,
                "std_msgs/msg/Float32MultiArray",
                multiarray_fields(np.asarray(result.action), ["action"]),
                t,
            )
        )
        out.append(
            OutputMessage(
                topics.ACTION_CHUNK,
                "std_msgs/msg/Float32MultiArray",
                multiarray_fields(np.asarray(result.action_chunk), ["time", "action"]),
                t,
            )
        )
        if command is not None:
            out.append(
                OutputMessage(
                    topics.JOINT_COMMAND,
                    "sensor_msgs/msg/JointState",
                    joint_state_fields(command.names, command.positions, stamp),
                    t,
                )
            )
    return out


def feature_names_message(pipeline: Any, stamp: float = 0.0) -> OutputMessage:
    """std_msgs/String with the JSON list of feature names (labels where given), published once, latched."""
    return OutputMessage(
        topics.FEATURE_NAMES, "std_msgs/msg/String", {"data": json.dumps(pipeline.feature_names())}, stamp
    )


# ------------------------------------------------------------------------------------ rosbags messages
def to_rosbags(message: OutputMessage, typestore: Any) -> Any:
    """Build the ``rosbags`` message object of an ``OutputMessage`` (``typestore.serialize_cdr`` writes it)."""
    return _build_rosbags(message.msgtype, message.fields, typestore)


def _build_rosbags(msgtype: str, values: dict, typestore: Any) -> Any:
    from rosbags.typesys.base import Nodetype

    _consts, fields = typestore.fielddefs[msgtype]
    kwargs = {}
    for name, (kind, detail) in fields:
        value = values.get(name)
        if kind == Nodetype.NAME:
            kwargs[name] = _build_rosbags(detail, value or {}, typestore)
        elif kind == Nodetype.BASE:
            base = detail[0]
            default = "" if base == "string" else False if base == "bool" else 0.0 if base.startswith("float") else 0
            kwargs[name] = type(default)(value) if value is not None else default
        else:  # sequence / array
            (sub_kind, sub_detail), _n = detail
            if sub_kind == Nodetype.NAME:
                kwargs[name] = [_build_rosbags(sub_detail, v, typestore) for v in (value or [])]
            elif sub_detail[0] == "string":
                kwargs[name] = list(value or [])
            else:
                dtype = _NUMPY_TYPES.get(sub_detail[0], sub_detail[0])
                kwargs[name] = np.asarray(value if value is not None else [], dtype=dtype).reshape(-1)
    return typestore.types[msgtype](**kwargs)


_NUMPY_TYPES = {"byte": "uint8", "char": "uint8", "bool": "bool", "float32": "float32", "float64": "float64"}
