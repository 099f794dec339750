"""``pai replay --bag``: real rosbag2 recordings (sqlite3 and mcap) through the shared pipeline, and every
output file checked against what was recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pai_core.cli import main
from tests.replay_helpers import CAMERAS, CameraSpec, expected_frames, make_sae, write_bag, write_settings

# sqlite3: front Image bgr8, wrist CompressedImage; mcap: front CompressedImage, wrist Image rgb8.
LAYOUTS = {
    "sqlite3": [
        CameraSpec("/cam/front/image_raw", "observation.images.front", 10, "bgr8"),
        CameraSpec("/cam/wrist/compressed", "observation.images.wrist", 15, "jpeg", 0.013),
    ],
    "mcap": [
        CameraSpec("/cam/front/compressed", "observation.images.front", 10, "jpeg"),
        CameraSpec("/cam/wrist/image_raw", "observation.images.wrist", 25, "rgb8", 0.013),
    ],
}
NS = "/pai_introspector"


def reference_frames(rec, cams, policy, sae):
    """Observations built here from the recorded pixels and joints, run through a freshly loaded Pipeline
    in one batch: the reference the replay must reproduce (shared engine)."""
    from pai_core import Observation
    from pai_core.pipeline import Pipeline

    feature = {c.topic: c.feature for c in cams}
    observations = [
        Observation(images={feature[t]: rgb for t, rgb in imgs.items()}, state=state, timestamp=stamp / 1e9)
        for stamp, imgs, state in expected_frames(rec, cams[0].topic, 0.5)
    ]
    return Pipeline.load(str(policy), str(sae)).step_batch(observations)


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def replayed(request, tmp_path_factory, policy_dir):
    from pai_core.ood import OODParams

    storage = request.param
    root = tmp_path_factory.mktemp(f"replay-{storage}")
    cams = LAYOUTS[storage]
    rec = write_bag(root / "bag", storage, cams, duration_s=1.2, joint_offset_s=0.031)
    sae = make_sae(root / "sae")
    reference = reference_frames(rec, cams, policy_dir, sae)
    # A threshold inside the score range, so the alarm rises part-way through.
    threshold = float(np.median([f.ood_score for f in reference]))
    OODParams(threshold=threshold, alpha=0.1, n_calibration=10).save(sae / "ood_params.json")
    settings = write_settings(root / "introspect.yaml", cams, policy_dir, sae, max_age_s=0.5)
    out = root / "out"
    rc = main(
        [
            "replay",
            "--bag",
            str(root / "bag"),
            "--config",
            str(settings),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    return {
        "storage": storage,
        "rec": rec,
        "out": out,
        "rc": rc,
        "cams": cams,
        "reference": reference,
        "threshold": threshold,
        "expected": expected_frames(rec, cams[0].topic, 0.5),
    }


def test_every_input_message_is_processed_or_skipped_with_a_reason(replayed):
    assert replayed["rc"] == 0
    summary = json.loads((replayed["out"] / "summary.json").read_text())
    acc = summary["accounting"]
    rec = replayed["rec"]
    driving = replayed["cams"][0].topic
    assert acc["frames_processed"] == len(replayed["expected"]) > 0
    assert acc["frames_total"] == len(rec.images[driving])
    assert sum(acc["frames_skipped"].values()) == len(rec.images[driving]) - len(replayed["expected"])
    written = {topic: len(msgs) for topic, msgs in rec.images.items()} | {"/joint_states": len(rec.joints)}
    for topic, n in written.items():
        counts = acc["inputs"][topic]
        assert counts["received"] == n
        assert counts["used"] + sum(counts["skipped"].values()) == n, topic
        assert all(reason for reason in counts["skipped"])
    # The faster wrist camera loses frames to newer ones, and says so.
    wrist = acc["inputs"][replayed["cams"][1].topic]["skipped"]
    assert any("replaced by a newer message" in reason for reason in wrist)


def test_tables_have_one_row_per_processed_frame_in_time_order(replayed):
    out, expected = replayed["out"], replayed["expected"]
    attention = pq.read_table(out / "attention.parquet").to_pandas()
    features = pq.read_table(out / "features.parquet")
    ood = pq.read_table(out / "ood.parquet").to_pandas()
    assert list(attention.columns) == [
        "episode",
        "frame",
        "timestamp",
        "latent_share",
        "state_share",
        "share_front",
        "share_wrist",
        "action",
    ]
    assert features.column_names == ["episode", "frame", "timestamp", "feature_index", "feature_value"]
    assert list(ood.columns) == [
        "episode",
        "frame",
        "timestamp",
        "score",
        "threshold",
        "alarm",
        "above",
        "reason",
        "state_coverage",
    ]
    assert ood["state_coverage"].isna().all()  # only patch_knn conditions on the joint state
    for table in (attention, features.to_pandas(), ood):
        assert len(table) == len(expected)
        np.testing.assert_allclose(table["timestamp"], [t / 1e9 for t, _, _ in expected], atol=1e-6)
        assert np.all(np.diff(table["frame"]) > 0)
    shares = attention[["latent_share", "state_share", "share_front", "share_wrist"]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=1e-4)
    assert int(features.schema.metadata[b"n_features"]) == 256
    np.testing.assert_allclose(ood["threshold"], replayed["threshold"])
    # The alarm follows the n-of-m policy (n=2, m=3, latched) over the recorded scores.
    above = (ood["score"] > replayed["threshold"]).to_numpy()
    raised = np.array([above[max(0, i - 2) : i + 1].sum() >= 2 for i in range(len(above))])
    np.testing.assert_array_equal(ood["alarm"].to_numpy(), np.maximum.accumulate(raised))


def _mcap_messages(path: Path) -> dict[str, list]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out: dict[str, list] = {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        schemas = {
            ch.topic: reader.get_summary().schemas[ch.schema_id] for ch in reader.get_summary().channels.values()
        }
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            out.setdefault(channel.topic, []).append((message.log_time, decoded))
        assert all(s.encoding == "ros2msg" for s in schemas.values())
    return out, {t: s.name for t, s in schemas.items()}


def test_mcap_carries_every_node_topic_readable_by_mcap_and_rosbags(replayed):
    from rosbags.highlevel import AnyReader

    n = len(replayed["expected"])
    messages, schemas = _mcap_messages(replayed["out"] / "replay.mcap")
    expected_schemas = {
        f"{NS}/feature_names": "std_msgs/msg/String",
        f"{NS}/overlay/front": "sensor_msgs/msg/Image",
        f"{NS}/overlay/wrist": "sensor_msgs/msg/Image",
        f"{NS}/overlay/front/compressed": "sensor_msgs/msg/CompressedImage",
        f"{NS}/overlay/wrist/compressed": "sensor_msgs/msg/CompressedImage",
        f"{NS}/attention_share": "std_msgs/msg/Float32MultiArray",
        f"{NS}/features": "std_msgs/msg/Float32MultiArray",
        f"{NS}/ood_score": "std_msgs/msg/Float32",
        f"{NS}/ood_threshold": "std_msgs/msg/Float32",
        f"{NS}/alarm": "std_msgs/msg/Bool",
        f"{NS}/action": "std_msgs/msg/Float32MultiArray",
        f"{NS}/action_chunk": "std_msgs/msg/Float32MultiArray",
    }
    assert schemas == expected_schemas
    for topic in ("overlay/front", "overlay/wrist", "overlay/front/compressed", "features", "ood_score", "alarm"):
        assert len(messages[f"{NS}/{topic}"]) == n, topic
    front = messages[f"{NS}/overlay/front"][0][1]
    assert (front.height, front.width, front.encoding) == (*CAMERAS["observation.images.front"], "rgb8")
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in messages[f"{NS}/overlay/front"]]
    np.testing.assert_allclose(stamps, [t / 1e9 for t, _, _ in replayed["expected"]], atol=1e-6)
    # Actions stop while the alarm holds, as on the robot.
    ood = pq.read_table(replayed["out"] / "ood.parquet").to_pandas()
    assert len(messages.get(f"{NS}/action", [])) == int((~ood["alarm"]).sum())
    with AnyReader([replayed["out"] / "replay.mcap"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {t: len(m) for t, m in messages.items()}
        conn = next(c for c in reader.connections if c.topic == f"{NS}/features")
        first = next(reader.messages([conn]))
        vec = reader.deserialize(first[2], conn.msgtype)
        assert vec.layout.dim[0].label == "features" and vec.data.shape == (256,)


def test_overlay_videos_have_one_frame_per_processed_frame_at_the_camera_size(replayed):
    import av

    for short, (h, w) in (
        ("front", CAMERAS["observation.images.front"]),
        ("wrist", CAMERAS["observation.images.wrist"]),
    ):
        for kind in ("attention", "ood"):
            with av.open(str(replayed["out"] / f"{short}_{kind}.mp4")) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) == len(replayed["expected"])
            assert frames[0].shape == (h, w, 3)


def test_report_shows_plots_and_the_skip_accounting(replayed):
    page = (replayed["out"] / "report.html").read_text()
    for png in ("ood_timeline.png", "attention_share.png", "top_features.png"):
        assert png in page and (replayed["out"] / png).stat().st_size > 1000
    summary = json.loads((replayed["out"] / "summary.json").read_text())
    for reason in summary["accounting"]["frames_skipped"]:
        assert reason in page.replace("&#x27;", "'")
    assert f"{summary['frames processed']} processed" in page


def test_replay_gives_the_same_outputs_as_pipeline_step_batch_on_the_same_frames(replayed):
    from pai_core.alarm import AlarmConfig, AlarmPolicy
    from pai_core.replay.tables import dense_features

    frames, out = replayed["reference"], replayed["out"]
    np.testing.assert_allclose(
        dense_features(out / "features.parquet"), np.stack([f.features for f in frames]), rtol=1e-4, atol=1e-5
    )
    ood = pq.read_table(out / "ood.parquet").to_pandas()
    np.testing.assert_allclose(ood["score"], [f.ood_score for f in frames], rtol=1e-4)
    policy = AlarmPolicy(AlarmConfig(n=2, m=3))
    expected_alarm = [policy.update(f.ood_score, replayed["threshold"]).active for f in frames]
    np.testing.assert_array_equal(ood["alarm"], expected_alarm)
    assert any(expected_alarm) and not all(expected_alarm)
    attention = pq.read_table(out / "attention.parquet").to_pandas()
    for short in ("front", "wrist"):
        np.testing.assert_allclose(
            attention[f"share_{short}"],
            [f.result.camera_share[f"observation.images.{short}"] for f in frames],
            rtol=1e-4,
            atol=1e-6,
        )
    np.testing.assert_allclose(
        np.stack(attention["action"]), np.stack([f.result.action for f in frames]), rtol=1e-4, atol=1e-5
    )
    messages, _ = _mcap_messages(out / "replay.mcap")
    np.testing.assert_allclose(
        [m.data for _, m in messages[f"{NS}/ood_score"]], [f.ood_score for f in frames], rtol=1e-4
    )
    np.testing.assert_allclose(
        np.stack([m.data for _, m in messages[f"{NS}/features"]]),
        np.stack([f.features for f in frames]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_a_bag_without_a_mapped_topic_is_an_error_listing_the_bags_topics(tmp_path, policy_dir, capsys):
    cams = LAYOUTS["mcap"]
    write_bag(tmp_path / "bag", "mcap", cams, duration_s=0.3)
    wrong = [CameraSpec("/cam/left", "observation.images.front", 10, "rgb8"), cams[1]]
    settings = write_settings(tmp_path / "s.yaml", wrong, policy_dir)
    rc = main(
        ["replay", "--bag", str(tmp_path / "bag"), "--config", str(settings), "--output-dir", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "no topic '/cam/left'" in err and "/cam/front/compressed (sensor_msgs/msg/CompressedImage)" in err
