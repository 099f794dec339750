"""Video-encoded LeRobot datasets decode with PyAV (LeRobot's own decoders need torchcodec or a removed
torchvision API here)."""

from __future__ import annotations

import numpy as np
import pytest

from pai_core.errors import InputError
from pai_core.sources.dataset import iter_episode
from pai_core.sources.video import decode_at
from pai_core.testing import make_lerobot_dataset

CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    kw = dict(cameras=CAMERAS, episodes=2, frames=8, fps=10)
    return (
        make_lerobot_dataset(root / "img", repo_id="pai/img", **kw),
        make_lerobot_dataset(root / "vid", repo_id="pai/vid", use_videos=True, **kw),
    )


def test_video_episode_frames_match_the_image_dataset_within_codec_loss(datasets):
    images, videos = datasets
    a, b = list(iter_episode(images, 1)), list(iter_episode(videos, 1))
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert (y.frame_index, y.episode_index) == (x.frame_index, x.episode_index)
        np.testing.assert_allclose(y.state, x.state)
        for key in CAMERAS:
            assert y.images[key].shape == x.images[key].shape and y.images[key].dtype == np.uint8
            err = np.abs(y.images[key].astype(int) - x.images[key].astype(int)).mean()
            assert err < 12, f"{key} frame {x.frame_index}: mean abs error {err:.1f}"
    # The right frame, not a neighbour: the moving block makes neighbours differ more than the codec does.
    key = "observation.images.front"
    same = np.abs(b[4].images[key].astype(int) - a[4].images[key].astype(int)).mean()
    neighbour = np.abs(b[4].images[key].astype(int) - a[6].images[key].astype(int)).mean()
    assert same < neighbour


def test_a_timestamp_without_a_frame_is_an_error_naming_the_video(datasets):
    _, videos = datasets
    path = videos.root / videos.meta.get_video_file_path(0, "observation.images.front")
    with pytest.raises(InputError, match="has no frame at 99.0000 s"):
        list(decode_at(path, [0.0, 99.0], tolerance_s=0.05))
