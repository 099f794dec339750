"""Damaged recordings: a clear error naming the bag, and every frame before the damage kept."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pai_core.cli import main
from tests.replay_helpers import CameraSpec, write_bag, write_settings

CAMS = [
    CameraSpec("/cam/front/image_raw", "observation.images.front", 10, "rgb8"),
    CameraSpec("/cam/wrist/image_raw", "observation.images.wrist", 15, "rgb8", 0.013),
]


def _damaged(tmp_path, storage: str, how: str):
    rec = write_bag(tmp_path / "bag", storage, CAMS, duration_s=2.0, joint_offset_s=0.007)
    file = next(p for p in (tmp_path / "bag").iterdir() if p.suffix in (".mcap", ".db3"))
    data = bytearray(file.read_bytes())
    damaged = tmp_path / f"damaged{file.suffix}"
    if how == "truncate":
        damaged.write_bytes(bytes(data[: len(data) // 2]))
    elif file.suffix == ".mcap":  # overwrite the start of the last chunk (its header and first records)
        from mcap.reader import make_reader

        with open(file, "rb") as f:
            start = make_reader(f).get_summary().chunk_indexes[-1].chunk_start_offset
        data[start : start + 64] = bytes(64)
        damaged.write_bytes(bytes(data))
    else:  # sqlite3: zero a stretch of database pages in the middle
        mid = len(data) // 2
        data[mid : mid + 4000] = bytes(4000)
        damaged.write_bytes(bytes(data))
    return rec, damaged


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_corrupt_bag_gives_a_clear_error_and_keeps_the_frames_before_the_damage(
    tmp_path, policy_dir, storage, capsys
):
    rec, damaged = _damaged(tmp_path, storage, "corrupt")
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    out = tmp_path / "out"
    rc = main(
        [
            "replay",
            "--bag",
            str(damaged),
            "--config",
            str(settings),
            "--output-dir",
            str(out),
            "--no-progress",
            "--batch-size",
            "4",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert str(damaged) in err and ("Could not read bag" in err or "is damaged" in err)
    written = len(rec.images[CAMS[0].topic])
    rows = pq.read_table(out / "attention.parquet").num_rows
    assert 0 < rows < written - 1
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["accounting"]
    assert acc["error"] and acc["frames_processed"] == rows
    assert acc["frames_total"] == written  # unread frames are counted, with their reason
    for counts in acc["inputs"].values():
        assert counts["used"] + sum(counts["skipped"].values()) == counts["received"]
    assert "Replay stopped early" in (out / "report.html").read_text()
    import av

    with av.open(str(out / "front_attention.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == rows


def test_a_truncated_mcap_is_salvaged_and_the_report_says_where_it_breaks_off(tmp_path, policy_dir, caplog):
    """A recording cut short (no summary, no footer): the indexed reader refuses it, the stream reader
    recovers its complete chunks; the replay runs on them and says what was lost."""
    rec = write_bag(tmp_path / "bag", "mcap", CAMS, duration_s=5.0, joint_offset_s=0.007)  # three 1 MB chunks
    data = next((tmp_path / "bag").glob("*.mcap")).read_bytes()
    damaged = tmp_path / "cut.mcap"
    damaged.write_bytes(data[: int(len(data) * 0.7)])  # cut inside the last chunk
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    out = tmp_path / "o"
    with caplog.at_level("WARNING"):
        rc = main(
            [
                "replay",
                "--bag",
                str(damaged),
                "--config",
                str(settings),
                "--output-dir",
                str(out),
                "--no-progress",
                "--no-video",
            ]
        )
    assert rc == 0
    assert f"{damaged} is truncated at byte" in caplog.text
    written = len(rec.images[CAMS[0].topic])
    rows = pq.read_table(out / "attention.parquet").num_rows
    assert 0 < rows < written  # what came before the cut, not the whole recording
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounting"]["notes"] and "truncated at byte" in summary["accounting"]["notes"][0]
    assert "truncated at byte" in (out / "report.html").read_text()
    from pai_core.sources.mcap_salvage import SalvagedMcap

    salvaged = SalvagedMcap(damaged)
    front = next(c for c in salvaged.connections if c.topic == CAMS[0].topic)
    assert 0 < front.msgcount < written and salvaged.truncated_at <= damaged.stat().st_size


def test_a_folder_holding_one_bare_mcap_without_metadata_replays_like_the_file(tmp_path, policy_dir):
    write_bag(tmp_path / "bag", "mcap", CAMS, duration_s=1.0, joint_offset_s=0.007)
    (tmp_path / "bag" / "metadata.yaml").unlink()
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    assert (
        main(
            [
                "replay",
                "--bag",
                str(tmp_path / "bag"),
                "--config",
                str(settings),
                "--output-dir",
                str(tmp_path / "o"),
                "--no-progress",
                "--no-video",
                "--no-mcap",
            ]
        )
        == 0
    )
    assert pq.read_table(tmp_path / "o" / "attention.parquet").num_rows > 5


def test_a_recording_written_by_mcap_ros2_replays(tmp_path, policy_dir):
    """A file from another tool: mcap_ros2's writer with ros2msg schemas, no rosbag2 metadata."""
    import numpy as np
    from mcap_ros2.writer import Writer

    from tests.replay_helpers import JOINTS

    time_def = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
    header_def = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
    sep = "=" * 80 + "\n"
    image_def = (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n"
        "uint32 step\nuint8[] data\n" + sep + header_def + sep + time_def
    )
    joint_def = (
        "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort\n"
        + sep
        + header_def
        + sep
        + time_def
    )
    path = tmp_path / "foreign.mcap"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        writer = Writer(f)
        image_schema = writer.register_msgdef("sensor_msgs/msg/Image", image_def)
        joint_schema = writer.register_msgdef("sensor_msgs/msg/JointState", joint_def)
        for i in range(12):
            t = 50_000_000_000 + i * 100_000_000
            stamp = {"sec": t // 10**9, "nanosec": t % 10**9}
            for cam, (h, w) in (("/cam/front/image_raw", (96, 128)), ("/cam/wrist/image_raw", (64, 64))):
                writer.write_message(
                    cam,
                    image_schema,
                    {
                        "header": {"stamp": stamp, "frame_id": cam},
                        "height": h,
                        "width": w,
                        "encoding": "rgb8",
                        "is_bigendian": 0,
                        "step": w * 3,
                        "data": rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes(),
                    },
                    log_time=t + 1000,
                    publish_time=t + 1000,
                )
            writer.write_message(
                "/joint_states",
                joint_schema,
                {
                    "header": {"stamp": stamp, "frame_id": ""},
                    "name": JOINTS,
                    "position": rng.normal(size=6).tolist(),
                    "velocity": [],
                    "effort": [],
                },
                log_time=t,
                publish_time=t,
            )
        writer.finish()
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    assert (
        main(
            [
                "replay",
                "--bag",
                str(path),
                "--config",
                str(settings),
                "--output-dir",
                str(tmp_path / "o"),
                "--no-progress",
                "--no-video",
                "--no-mcap",
            ]
        )
        == 0
    )
    assert pq.read_table(tmp_path / "o" / "attention.parquet").num_rows >= 11


def test_a_replay_that_processes_no_frame_fails_with_the_reasons_grouped(tmp_path, policy_dir, capsys):
    write_bag(tmp_path / "bag", "mcap", CAMS, duration_s=1.0, joint_offset_s=0.3)  # joints 0.3 s off the cameras
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir, max_age_s=0.01)
    rc = main(
        [
            "replay",
            "--bag",
            str(tmp_path / "bag"),
            "--config",
            str(settings),
            "--output-dir",
            str(tmp_path / "o"),
            "--no-progress",
            "--no-video",
            "--no-mcap",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "replayed no frame of 10" in err and "inputs further apart than max_input_age_s" in err


def test_a_missing_bag_path_is_an_error_saying_what_was_expected(tmp_path, policy_dir, capsys):
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    rc = main(
        ["replay", "--bag", str(tmp_path / "nope"), "--config", str(settings), "--output-dir", str(tmp_path / "o")]
    )
    assert rc == 1
    assert "does not exist; expected a rosbag2 folder" in capsys.readouterr().err


def test_a_failed_replay_into_an_earlier_runs_folder_leaves_none_of_the_earlier_runs_files(tmp_path, policy_dir):
    rec, damaged = _damaged(tmp_path, "mcap", "corrupt")
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    out = tmp_path / "out"

    def replay(bag, *flags: str) -> int:
        argv = ["replay", "--bag", str(bag), "--config", str(settings), "--output-dir", str(out), "--no-progress"]
        return main([*argv, "--batch-size", "4", *flags])

    assert replay(tmp_path / "bag") == 0  # the undamaged recording, with videos and replay.mcap
    first = json.loads((out / "summary.json").read_text())
    assert {"front_attention.mp4", "replay.mcap"} <= set(first["files"]) and (out / "front_attention.mp4").is_file()
    (out / "notes.txt").write_text("the user's own file")
    assert replay(damaged, "--no-video", "--no-mcap") == 1
    second = json.loads((out / "summary.json").read_text())
    assert second["accounting"]["error"] and 0 < second["frames processed"] < first["frames processed"]
    assert pq.read_table(out / "attention.parquet").num_rows == second["frames processed"]
    assert not (out / "front_attention.mp4").exists() and not (out / "replay.mcap").exists()  # the earlier run's
    assert "Replay stopped early" in (out / "report.html").read_text()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind
