"""ROS message <-> numpy conversion (pai_core.ros_convert) on real rclpy and rosbags messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pai_core.ros_convert import (
    JointCommand,
    MessageError,
    frame_messages,
    image_msg_to_rgb,
    joint_state_to_vector,
    ns_to_stamp,
    sec_to_stamp,
    stamp_to_ns,
    stamp_to_sec,
    to_rosbags,
)

sensor_msgs = pytest.importorskip("sensor_msgs.msg")
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def raw_image(encoding: str, array: np.ndarray, pad: int = 0, bigendian: bool = False):
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    data = np.zeros((h, row.shape[1] + pad), np.uint8)
    data[:, : row.shape[1]] = row
    msg = sensor_msgs.Image(height=h, width=w, encoding=encoding, step=data.shape[1], is_bigendian=int(bigendian))
    msg.data = data.tobytes()
    return msg


@pytest.mark.parametrize(
    "encoding,array",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
    ],
)
def test_colour_images_convert_to_the_same_rgb_array_with_and_without_row_padding(encoding, array):
    for pad in (0, 5):
        out = image_msg_to_rgb(raw_image(encoding, np.ascontiguousarray(array), pad))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, RGB)


def test_mono8_becomes_three_equal_channels_and_big_endian_16_bit_is_scaled():
    out = image_msg_to_rgb(raw_image("mono8", RGB[..., 0].copy()))
    np.testing.assert_array_equal(out, np.repeat(RGB[..., :1], 3, axis=2))
    sixteen = (RGB.astype(np.uint16) * 257).astype(">u2")
    np.testing.assert_array_equal(image_msg_to_rgb(raw_image("rgb16", sixteen, bigendian=True)), RGB)


@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".png", "rgb8; png compressed bgr8"), (".jpg", "jpeg")])
def test_compressed_images_decode_to_rgb(ext, fmt):
    from pai_core.testing import synthetic_frame

    image = synthetic_frame(48, 64, 0.3)  # smooth, with a red block: JPEG keeps it close, channel order shows
    msg = sensor_msgs.CompressedImage(format=fmt)
    msg.data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    out = image_msg_to_rgb(msg)
    assert out.shape == image.shape
    if ext == ".png":
        np.testing.assert_array_equal(out, image)
    else:
        assert np.abs(out.astype(int) - image).mean() < 6


def test_bad_images_raise_errors_that_name_the_encoding_and_the_size():
    with pytest.raises(MessageError, match="'yuv_unknown' is not supported"):
        image_msg_to_rgb(raw_image("yuv_unknown", RGB))
    short = raw_image("rgb8", RGB)
    short.data = bytes(50)
    with pytest.raises(MessageError, match=r"10x6 rgb8 \(step 30\) needs 180 bytes of data, got 50"):
        image_msg_to_rgb(short)
    narrow = raw_image("rgb8", RGB)
    narrow.step = 12
    with pytest.raises(MessageError, match="step 12 is smaller than a row"):
        image_msg_to_rgb(narrow)
    garbage = sensor_msgs.CompressedImage(format="jpeg")
    garbage.data = b"garbage"
    with pytest.raises(MessageError, match="could not be decoded"):
        image_msg_to_rgb(garbage)
    with pytest.raises(MessageError, match="format 'h264'"):
        image_msg_to_rgb(sensor_msgs.CompressedImage(format="h264"))


def test_rosbags_messages_convert_like_rclpy_messages(typestore):
    msg = raw_image("bgr8", np.ascontiguousarray(RGB[..., ::-1]), pad=2)
    from rclpy.serialization import serialize_message

    bag_msg = typestore.deserialize_cdr(serialize_message(msg), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_msg_to_rgb(bag_msg), image_msg_to_rgb(msg))
    # filled velocity/effort: rclpy pads empty arrays differently from rosbags (see ENVIRONMENT.md)
    joints = sensor_msgs.JointState(name=["b", "a"], position=[2.0, 1.0], velocity=[0.0, 0.0], effort=[0.0, 0.0])
    bag_joints = typestore.deserialize_cdr(serialize_message(joints), "sensor_msgs/msg/JointState")
    np.testing.assert_array_equal(joint_state_to_vector(bag_joints, ["a", "b"]), [1.0, 2.0])


def test_joint_states_map_by_name_in_any_order_and_reject_missing_nan_and_length_mismatch():
    msg = sensor_msgs.JointState(name=["wrist", "extra", "elbow", "shoulder"], position=[3.0, 9.0, 2.0, 1.0])
    out = joint_state_to_vector(msg, ["shoulder", "elbow", "wrist"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])
    with pytest.raises(MessageError, match=r"missing joints \['gripper'\]"):
        joint_state_to_vector(msg, ["shoulder", "gripper"])
    nan = sensor_msgs.JointState(name=["a", "b"], position=[float("nan"), 1.0])
    with pytest.raises(MessageError, match=r"\['a'\] are not finite"):
        joint_state_to_vector(nan, ["a", "b"])
    with pytest.raises(MessageError, match="2 names but 1 positions"):
        joint_state_to_vector(sensor_msgs.JointState(name=["a", "b"], position=[1.0]), ["a"])


def test_stamps_convert_exactly_to_nanoseconds_and_to_float_seconds():
    from builtin_interfaces.msg import Time

    stamp = Time(sec=1_700_000_000, nanosec=123_456_789)
    assert stamp_to_ns(stamp) == 1_700_000_000_123_456_789
    assert stamp_to_sec(stamp) == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert sec_to_stamp(12.5) == (12, 500_000_000)
    sec, nsec = sec_to_stamp(stamp_to_sec(stamp))
    assert sec == stamp.sec and abs(nsec - stamp.nanosec) < 1000
    assert ns_to_stamp(stamp_to_ns(stamp)) == (1_700_000_000, 123_456_789)  # integer nanoseconds are exact


@pytest.fixture(scope="module")
def frame(policy_dir, tmp_path_factory):
    from pai_core.ood import OODParams
    from pai_core.pipeline import Pipeline
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from tests.conftest import random_observation

    sae_dir = tmp_path_factory.mktemp("sae")
    save_sae(SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8)), sae_dir)
    OODParams(threshold=1e9).save(sae_dir / "ood_params.json")
    pipe = Pipeline.load(str(policy_dir), str(sae_dir))
    obs = random_observation(pipe.engine, np.random.default_rng(1), t=1_700_000_000.25)
    return pipe, pipe.step(obs)


def test_frame_messages_describe_every_output_with_the_input_stamp(frame):
    pipe, fr = frame
    msgs = {m.topic: m for m in frame_messages(fr, pipe, None, stamp=(1_700_000_000, 250_000_001))}
    assert set(msgs) == {
        "~/overlay/front",
        "~/overlay/front/compressed",
        "~/overlay/wrist",
        "~/overlay/wrist/compressed",
        "~/attention_share",
        "~/features",
        "~/ood_score",
        "~/ood_threshold",
        "~/alarm",
        "~/action",
        "~/action_chunk",
    }
    front = msgs["~/overlay/front"]
    assert front.msgtype == "sensor_msgs/msg/Image"
    assert front.fields["header"]["stamp"] == {"sec": 1_700_000_000, "nanosec": 250_000_001}
    h, w = fr.observation.images["observation.images.front"].shape[:2]
    assert (front.fields["height"], front.fields["width"], front.fields["data"].size) == (h, w, h * w * 3)
    features = msgs["~/features"].fields
    assert features["layout"]["dim"] == [{"label": "features", "size": pipe.n_features, "stride": pipe.n_features}]
    np.testing.assert_array_equal(features["data"], fr.features.astype(np.float32))
    chunk = msgs["~/action_chunk"].fields["layout"]["dim"]
    t, a = fr.result.action_chunk.shape
    assert chunk == [{"label": "time", "size": t, "stride": t * a}, {"label": "action", "size": a, "stride": a}]
    assert msgs["~/ood_score"].fields == {"data": fr.ood_score}
    no_actions = {m.topic for m in frame_messages(fr, pipe, None, compressed=False, actions=False)}
    assert "~/action" not in no_actions and "~/overlay/front/compressed" not in no_actions
    names = [f"j{i}" for i in range(fr.result.action.shape[0])]
    command = JointCommand(names, np.radians(fr.result.action))
    joints = {m.topic: m for m in frame_messages(fr, pipe, None, stamp=(5, 6), command=command)}["~/joint_command"]
    assert joints.msgtype == "sensor_msgs/msg/JointState" and joints.fields["name"] == names
    assert joints.fields["header"]["stamp"] == {"sec": 5, "nanosec": 6}
    np.testing.assert_array_equal(joints.fields["position"], np.radians(fr.result.action))
    assert "~/joint_command" not in {m.topic for m in frame_messages(fr, pipe, None, actions=False, command=command)}


def assert_same_message(a, b, where: str) -> None:
    """Field-by-field equality of two rosbags message objects."""
    import dataclasses

    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same_message(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_message(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_rclpy_and_rosbags_messages_built_from_frame_messages_hold_the_same_values(frame, typestore):
    import sys
    from pathlib import Path

    from rclpy.serialization import serialize_message

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "pai"))
    try:
        from pai.ros_msgs import to_rclpy
    finally:
        sys.path.pop(0)
    pipe, fr = frame
    command = JointCommand([f"j{i}" for i in range(fr.result.action.shape[0])], np.asarray(fr.result.action) * 0.5)
    for out in frame_messages(fr, pipe, None, command=command):
        if out.msgtype == "sensor_msgs/msg/JointState":
            # rosbags cannot read rclpy's empty velocity/effort arrays (ENVIRONMENT.md); rclpy reads both
            from rclpy.serialization import deserialize_message
            from sensor_msgs.msg import JointState

            a = deserialize_message(serialize_message(to_rclpy(out)), JointState)
            b = deserialize_message(bytes(typestore.serialize_cdr(to_rosbags(out, typestore), out.msgtype)), JointState)
            assert list(a.name) == list(b.name) == command.names and a.header == b.header
            np.testing.assert_array_equal(a.position, b.position)
            np.testing.assert_allclose(a.position, command.positions)
            continue
        # CDR alignment padding is not zeroed by rclpy, so compare values, not bytes
        via_rclpy = typestore.deserialize_cdr(serialize_message(to_rclpy(out)), out.msgtype)
        via_rosbags = typestore.deserialize_cdr(
            typestore.serialize_cdr(to_rosbags(out, typestore), out.msgtype), out.msgtype
        )
        assert_same_message(via_rclpy, via_rosbags, out.topic)
        if isinstance(out.fields.get("data"), np.ndarray):
            np.testing.assert_array_equal(via_rclpy.data, out.fields["data"], err_msg=out.topic)


def test_one_qos_table_latches_alarm_stop_and_feature_names_for_every_publisher():
    from rclpy.qos import DurabilityPolicy

    from pai_core import topics
    from pai_core.ros_qos import is_latched, output_qos

    for topic in (topics.ALARM, topics.SAFE_STOP, topics.FEATURE_NAMES):
        assert is_latched(topic) and is_latched(topics.resolve(topic))
        assert output_qos(topic).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert not is_latched(topics.OOD_SCORE) and output_qos(topics.OOD_SCORE).depth == 10
    assert is_latched("/robot1/pai_introspector/alarm", namespace="/robot1/pai_introspector")
