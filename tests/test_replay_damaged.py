"""Damaged recordings: a clear error naming the bag, and every frame before the damage kept."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pai_core.cli import main
from tests.replay_helpers import CameraSpec, write_bag, write_settings

CAMS = [CameraSpec("/cam/front/image_raw", "observation.images.front", 10, "rgb8"),
        CameraSpec("/cam/wrist/image_raw", "observation.images.wrist", 15, "rgb8", 0.013)]


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
        data[start: start + 64] = bytes(64)
        damaged.write_bytes(bytes(data))
    else:  # sqlite3: zero a stretch of database pages in the middle
        mid = len(data) // 2
        data[mid: mid + 4000] = bytes(4000)
        damaged.write_bytes(bytes(data))
    return rec, damaged


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_corrupt_bag_gives_a_clear_error_and_keeps_the_frames_before_the_damage(tmp_path, policy_dir, storage, capsys):
    rec, damaged = _damaged(tmp_path, storage, "corrupt")
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    out = tmp_path / "out"
    rc = main(["replay", "--bag", str(damaged), "--config", str(settings), "--output-dir", str(out), "--no-progress",
               "--batch-size", "4"])
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


def test_a_truncated_mcap_file_is_an_error_naming_the_file(tmp_path, policy_dir, capsys):
    _rec, damaged = _damaged(tmp_path, "mcap", "truncate")
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    rc = main(["replay", "--bag", str(damaged), "--config", str(settings), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"Could not open bag {damaged}" in err


def test_a_missing_bag_path_is_an_error_saying_what_was_expected(tmp_path, policy_dir, capsys):
    settings = write_settings(tmp_path / "s.yaml", CAMS, policy_dir)
    rc = main(["replay", "--bag", str(tmp_path / "nope"), "--config", str(settings), "--output-dir", str(tmp_path / "o")])
    assert rc == 1
    assert "does not exist; expected a rosbag2 folder" in capsys.readouterr().err
