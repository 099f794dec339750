"""A real rosbag2 recording played into the live node process (real rclpy, loopback Fast DDS) with
``bag_replay``, started and stopped by ``pai_core.sim.ros_replay``: every frame answered once, and the node's
scores and alarm equal offline ``pai replay`` of the same bag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pai_core.cli import main
from tests.replay_helpers import CameraSpec, expected_frames, make_sae, write_bag

pytest.importorskip("rclpy")

# front: raw rgb8 at 10 Hz drives the frames; wrist: jpeg at 15 Hz, joints at 25 Hz, both offset.
CAMS = [
    CameraSpec("/pai_bag/front/image_raw", "observation.images.front", 10, "rgb8"),
    CameraSpec("/pai_bag/wrist/compressed", "observation.images.wrist", 15, "jpeg", 0.013),
]
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@pytest.fixture(scope="module")
def played(tmp_path_factory, policy_dir):
    from pai_core import Observation
    from pai_core.ood import OODParams
    from pai_core.pipeline import Pipeline
    from pai_core.sim.ros_replay import RosReplayConfig, replay_through_node, write_node_params

    assert os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "source scripts/test_env.sh (loopback DDS profile)"
    root = tmp_path_factory.mktemp("ros_bag_replay")
    rec = write_bag(root / "bag", "mcap", CAMS, duration_s=1.2, joint_offset_s=0.031)
    expected = expected_frames(rec, CAMS[0].topic, 0.5)
    sae = make_sae(root / "sae")
    feature = {c.topic: c.feature for c in CAMS}
    reference = Pipeline.load(str(policy_dir), str(sae)).step_batch(
        [
            Observation(images={feature[t]: rgb for t, rgb in imgs.items()}, state=state, timestamp=stamp / 1e9)
            for stamp, imgs, state in expected
        ]
    )
    # a threshold inside the score range, so the alarm (3 of 5, latched) rises part-way through
    threshold = float(np.median([f.ood_score for f in reference]))
    OODParams(threshold=threshold, alpha=0.1, n_calibration=10).save(sae / "ood_params.json")
    params = write_node_params(
        root / "params.yaml",
        policy_dir,
        sae,
        cameras=feature,
        joint_names=JOINTS,
        joint_states_topic="/joint_states",
        stale_timeout_s=60.0,
        rate_hz=20.0,
        alarm={"n": 2, "m": 3, "latch": True, "clear_after": 10},
        safe_stop={"service": ""},
    )
    offline = root / "offline"
    assert (
        main(
            [
                "replay",
                "--bag",
                str(root / "bag"),
                "--config",
                str(params),
                "--output-dir",
                str(offline),
                "--no-video",
                "--no-mcap",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = replay_through_node(
        RosReplayConfig(
            root / "bag",
            params,
            root / "node",
            offline_dir=offline,
            rate=1.0,
            domain_id=int(os.environ.get("ROS_DOMAIN_ID", "77")),
            progress=False,
        )
    )
    return {"root": root, "expected": expected, "summary": summary, "offline": offline, "out": root / "node"}


def test_every_bag_frame_gets_exactly_one_answer_from_the_node(played):
    summary, expected = played["summary"], played["expected"]
    assert summary["bag_frames"] == 12
    assert summary["frames_published"] == len(expected) > 0
    assert summary["frames_answered"] == len(expected)
    assert summary["outputs_received"] == len(expected) and summary["extra_outputs"] == 0
    assert sum(summary["frames_skipped"].values()) == summary["bag_frames"] - len(expected)
    table = pq.read_table(played["out"] / "node_outputs.parquet").to_pandas()
    assert table["answered"].all()
    # the node's outputs carry the recorded stamps of the frames, in order
    assert table["stamp_ns"].tolist() == [stamp for stamp, _imgs, _state in expected]
    assert summary["node_exit_code"] == 0


def test_node_scores_and_alarm_equal_offline_replay_of_the_same_bag(played):
    node = pq.read_table(played["out"] / "node_outputs.parquet").to_pandas()
    offline = pq.read_table(played["offline"] / "ood.parquet").to_pandas()
    assert len(offline) == len(node)
    np.testing.assert_allclose(node["stamp"], offline["timestamp"], atol=1e-6)
    np.testing.assert_allclose(node["score"], offline["score"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(node["threshold"], offline["threshold"], rtol=1e-6)
    assert node["alarm"].tolist() == offline["alarm"].tolist()
    assert node["alarm"].any() and not node["alarm"].all(), "the threshold is meant to raise the alarm part-way"
    attention = pq.read_table(played["offline"] / "attention.parquet").to_pandas()
    for short in ("front", "wrist"):
        np.testing.assert_allclose(node[f"share_{short}"], attention[f"share_{short}"], atol=1e-4)
    summary = played["summary"]
    assert summary["max_abs_score_diff_vs_offline"] <= 1e-4
    assert summary["offline"]["matched_frames"] == len(node) and summary["offline"]["alarm_mismatches"] == 0
    assert summary["alarm_frames"] == int(node["alarm"].sum())


def test_the_comparison_plot_and_the_node_log_are_written(played):
    import cv2

    image = cv2.imread(str(played["out"] / "node_vs_offline.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600
    log = Path(played["summary"]["node_log"]).read_text()
    assert "ready" in log


def test_a_bag_without_the_nodes_camera_topic_is_an_error_naming_the_topic(played, tmp_path):
    from pai_core.sim.ros_replay import ROOT, ros_env

    params = yaml.safe_load((played["root"] / "params.yaml").read_text())
    params["/**"]["ros__parameters"]["cameras"]["topics"][0] = "/not/in/the/bag"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pai.bag_replay",
            "--bag",
            str(played["root"] / "bag"),
            "--params-file",
            str(path),
            "--output-dir",
            str(tmp_path / "out"),
            "--start-timeout",
            "1",
        ],
        env=ros_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "/not/in/the/bag" in proc.stderr and "/pai_bag/front/image_raw" in proc.stderr


def bag_replay_module():
    """The package's bag_replay, imported from the source tree as ``python -m pai.bag_replay`` runs it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "pai"))
    try:
        from pai import bag_replay
    finally:
        sys.path.pop(0)
    return bag_replay


def assert_groups_are_the_offline_observations(bag: Path, params: Path, policy_dir: Path) -> int:
    """bag_replay's groups, decoded from the rclpy messages it publishes, are offline replay's observations: the
    same frames, stamps, images and joint states, and the same frames skipped for the same reasons."""
    from rclpy.serialization import serialize_message

    from pai_core.policy import load_policy
    from pai_core.ros_convert import image_msg_to_rgb, joint_state_to_vector
    from pai_core.settings import load_settings
    from pai_core.sources.accounting import Accounting
    from pai_core.sources.bag import BagSource, BagTopics

    bag_replay = bag_replay_module()
    settings = load_settings(params)
    loaded = load_policy(str(policy_dir))
    cameras = [k for k in loaded.policy.config.input_features if k.startswith("observation.images.")]
    offline_acc = Accounting()
    with BagSource(bag, BagTopics.from_settings(settings, cameras, needs_state=True), offline_acc) as source:
        offline = list(source)
    error: list[str] = []
    topics = bag_replay.bag_topics(settings, bag)
    assert topics.joint_states_topic == "/joint_states", "the policy's config.json declares observation.state"
    with BagSource(bag, topics, keep_messages=True) as source:
        groups = list(bag_replay.frame_groups(source, error))
        skipped = dict(source.accounting.frames_skipped)
    assert error == [] and skipped == dict(offline_acc.frames_skipped)
    assert len(groups) == len(offline) > 0
    feature = settings.camera_map
    for group, obs in zip(groups, offline):
        assert (group.index, group.stamp_ns, group.log_ns) == (obs.frame_index, obs.stamp_ns, obs.extra["log_time_ns"])
        topics_sent = [t for t, _ in group.messages]
        assert topics_sent[-1] == CAMS[0].topic and sorted(topics_sent) == sorted([*feature, "/joint_states"])
        for topic, msg in group.messages:
            assert len(serialize_message(msg)) > 0  # an rclpy message, ready to publish
            if topic == "/joint_states":
                np.testing.assert_array_equal(np.float32(joint_state_to_vector(msg, settings.joint_names)), obs.state)
            else:
                np.testing.assert_array_equal(image_msg_to_rgb(msg), obs.images[feature[topic]])
    return len(groups)


def test_bag_replay_publishes_exactly_the_observations_offline_replay_forms_from_the_bag(played, policy_dir):
    bag_replay = bag_replay_module()
    from pai_core.sources import bag as bag_source

    assert bag_replay.BagSource is bag_source.BagSource, "bag_replay groups through pai_core.sources.bag"
    n = assert_groups_are_the_offline_observations(played["root"] / "bag", played["root"] / "params.yaml", policy_dir)
    assert n == len(played["expected"])


def test_bag_replay_groups_a_truncated_mcap_as_offline_replay_salvages_it(played, policy_dir, tmp_path):
    rec = write_bag(tmp_path / "bag", "mcap", CAMS, duration_s=6.0, joint_offset_s=0.031)  # three 1 MB chunks
    source_file = next(p for p in (tmp_path / "bag").iterdir() if p.suffix == ".mcap")
    data = source_file.read_bytes()
    damaged = tmp_path / "cut.mcap"
    damaged.write_bytes(data[: int(len(data) * 0.7)])  # cut inside the last chunk
    from pai_core.sources.bag import open_reader

    reader = open_reader(damaged)
    try:
        assert getattr(reader, "truncated", False), "the cut file is read by the salvaging stream reader"
    finally:
        reader.close()
    n = assert_groups_are_the_offline_observations(damaged, played["root"] / "params.yaml", policy_dir)
    assert 0 < n < len(expected_frames(rec, CAMS[0].topic, 0.5))
