"""``pai replay --dataset-repo-id``: the seed's command on a video-encoded LeRobot dataset."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from pai_core.cli import main
from pai_core.testing import make_lerobot_dataset
from tests.conftest import TWO_CAMERAS


def test_replaying_a_video_dataset_episode_writes_every_output_for_every_frame(tmp_path, policy_dir):
    import av
    from mcap.reader import make_reader

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/vid", cameras=TWO_CAMERAS, episodes=2, frames=9, use_videos=True)
    out = tmp_path / "out"
    rc = main(
        [
            "replay",
            "--dataset-repo-id",
            "pai/vid",
            "--root",
            str(tmp_path / "ds"),
            "--episodes",
            "1",
            "--policy-path",
            str(policy_dir),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0
    attention = pq.read_table(out / "attention.parquet").to_pandas()
    assert list(attention["frame"]) == list(range(9)) and set(attention["episode"]) == {1}
    np.testing.assert_allclose(attention["timestamp"], np.arange(9) / 10, atol=1e-4)
    assert not (out / "features.parquet").exists()  # no SAE: attention only
    for short, (h, w) in (
        ("front", TWO_CAMERAS["observation.images.front"]),
        ("wrist", TWO_CAMERAS["observation.images.wrist"]),
    ):
        with av.open(str(out / f"{short}_attention.mp4")) as container:
            stream = container.streams.video[0]
            frames = list(container.decode(video=0))
            assert len(frames) == 9 and (frames[0].height, frames[0].width) == (h, w)
            assert float(stream.average_rate) == 10.0
    with open(out / "replay.mcap", "rb") as f:
        stats = make_reader(f).get_summary().statistics
    assert stats.message_count > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounting"]["frames_processed"] == 9 and summary["accounting"]["frames_skipped"] == {}


def test_an_episode_that_does_not_exist_is_an_error_naming_the_count(tmp_path, policy_dir, capsys):
    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/img", cameras=TWO_CAMERAS, episodes=1, frames=3)
    rc = main(
        [
            "replay",
            "--dataset-repo-id",
            "pai/img",
            "--root",
            str(tmp_path / "ds"),
            "--episodes",
            "5",
            "--policy-path",
            str(policy_dir),
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert "Episode 5 not found" in capsys.readouterr().err
