"""``pai replay --foxglove``: channels advertised before the first frame, each frame sent as soon as it is
computed, and ``--foxglove-keep`` serving the finished replay with playback controls to a client that
connects late. A real WebSocket client on 127.0.0.1 decodes the CDR payloads it receives with the advertised
schemas and compares them with the Parquet tables the same run wrote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pai_core.foxglove_live import output_topics
from pai_core.pipeline import Pipeline
from pai_core.replay.api import ReplayOptions, replay
from pai_core.sources.accounting import Accounting
from pai_core.sources.dataset import iter_episode, open_dataset
from pai_core.testing import make_lerobot_dataset
from tests.conftest import TWO_CAMERAS
from tests.foxglove_client import PAUSE, PLAY, FoxgloveClient
from tests.replay_helpers import make_sae

NS = "/pai_introspector"
PAI = str(Path(sys.executable).with_name("pai"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(policy_dir, tmp_path_factory):
    """A 2-camera dataset episode of 12 frames at 10 fps, and an SAE whose threshold (0) every frame exceeds
    (the 3-of-5 alarm rises at the third frame)."""
    base = tmp_path_factory.mktemp("foxreplay")
    make_lerobot_dataset(base / "ds", repo_id="pai/img", cameras=TWO_CAMERAS, episodes=1, frames=12)
    sae = make_sae(base / "sae", d_in=64, threshold=0.0)
    return base, policy_dir, sae


def _replay_in_thread(observations, pipeline, options) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = replay(observations, pipeline, options, Accounting(), total=None, fps=10.0, source="test")
        except BaseException as exc:  # re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_every_channel_is_advertised_before_the_first_frame_is_processed(world, tmp_path):
    base, policy, sae = world
    pipeline = Pipeline.load(str(policy), str(sae))
    dataset = open_dataset("pai/img", base / "ds")
    release, read = threading.Event(), []

    def gated():
        release.wait(120)  # the source holds its first frame back until the client has checked
        for obs in iter_episode(dataset, 0):
            read.append(obs)
            yield obs

    port = free_port()
    options = ReplayOptions(tmp_path / "out", video=False, mcap=False, foxglove_port=port, progress=False)
    thread, out = _replay_in_thread(gated(), pipeline, options)
    client = FoxgloveClient(port)
    expected = output_topics(pipeline)
    client.wait(lambda: len(client.topics()) == len(expected), 120, "the advertisement")
    assert read == [] and client.messages == []  # no frame read, none sent
    advertised = client.topics()
    assert {t: c["schemaName"] for t, c in advertised.items()} == expected
    for topic in (f"{NS}/overlay/front", f"{NS}/overlay/wrist/compressed", f"{NS}/features", f"{NS}/alarm"):
        assert advertised[topic]["encoding"] == "cdr" and advertised[topic]["schemaEncoding"] == "ros2msg"
    assert "uint32 height" in advertised[f"{NS}/overlay/front"]["schema"]  # the ros2msg text, dependencies too
    assert "builtin_interfaces/Time stamp" in advertised[f"{NS}/overlay/front"]["schema"]
    time.sleep(1.0)  # let the server register the subscriptions before the first frame goes out
    release.set()
    thread.join(timeout=300)
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result.accounting.frames_processed == 12 and result.foxglove is None
    client.wait(lambda: len(client.on(f"{NS}/alarm")) == 12, 30, "twelve frames")
    assert set(client.topics()) == {m.topic for m in client.messages}  # every advertised topic carried data

    # the bytes a client decodes are the values the run wrote to its tables
    shares = pq.read_table(tmp_path / "out" / "attention.parquet").to_pandas()
    ood = pq.read_table(tmp_path / "out" / "ood.parquet").to_pandas()
    got_shares = np.array([client.decode(m).data for m in client.on(f"{NS}/attention_share")])
    want = shares[["latent_share", "state_share", "share_front", "share_wrist"]].to_numpy()
    np.testing.assert_allclose(got_shares, want, rtol=1e-5)
    np.testing.assert_allclose([client.decode(m).data for m in client.on(f"{NS}/ood_score")], ood["score"], rtol=1e-5)
    assert [client.decode(m).data for m in client.on(f"{NS}/alarm")] == ood["alarm"].tolist()
    assert [m.log_time for m in client.on(f"{NS}/alarm")] == [round(t * 1e9) for t in shares["timestamp"]]
    front = client.decode(client.on(f"{NS}/overlay/front")[0])
    assert (front.height, front.width, front.encoding) == (96, 128, "rgb8")
    client.close()


def _lockstep(dataset, client: FoxgloveClient, wait_s: float, late: list[int]):
    """A source that reads frame k only once the client has frame k-1 (waiting at most ``wait_s``):
    frame by frame streaming runs in lock step; a batch of frames sent together makes it wait."""
    for k, obs in enumerate(iter_episode(dataset, 0, last=5)):
        if k:
            try:
                client.wait(lambda k=k: len(client.on(f"{NS}/alarm")) >= k, wait_s, f"frame {k - 1}")
            except AssertionError:
                late.append(k)
        yield obs


@pytest.mark.parametrize("batch_size, late_frames", [(None, []), (4, [1, 2, 3])])
def test_each_frame_reaches_the_client_before_the_next_is_read(world, tmp_path, batch_size, late_frames):
    """With --foxglove the batch is 1 unless given: frame k is on the client before frame k+1 leaves the
    source. The explicit batch of 4 shows what the test catches: frames 1-3 wait for a batch to finish."""
    base, policy, sae = world
    pipeline = Pipeline.load(str(policy), str(sae))
    dataset = open_dataset("pai/img", base / "ds")
    port = free_port()
    options = ReplayOptions(
        tmp_path / "out", batch_size=batch_size, video=False, mcap=False, foxglove_port=port, progress=False
    )
    assert options.batch_size == (batch_size or 1)
    client = FoxgloveClient(port)
    late: list[int] = []
    gate = threading.Event()

    def source():
        gate.wait(120)
        yield from _lockstep(dataset, client, 120 if batch_size is None else 1.5, late)

    thread, out = _replay_in_thread(source(), pipeline, options)
    client.wait(lambda: len(client.topics()) == len(output_topics(pipeline)), 120, "the advertisement")
    time.sleep(1.0)  # subscriptions registered
    gate.set()
    thread.join(timeout=600)
    assert "error" not in out, out.get("error")
    assert out["result"].accounting.frames_processed == 5
    client.wait(lambda: len(client.on(f"{NS}/alarm")) == 5, 30, "five frames")
    assert set(late) >= set(late_frames) if late_frames else late == []  # (frame 4 may wait on a slow batch)
    client.close()


def test_a_client_that_connects_after_the_replay_plays_it_back_with_foxglove_keep(world, tmp_path):
    """``pai replay --foxglove-keep``: the replay ends, the command prints where it serves, and a client
    that connects only then gets server info with the time range and playback capabilities, the whole
    replay played at its recorded pace, a seek (paused) to one frame, and play at 4x to the end; Ctrl-C
    ends the command cleanly."""
    base, policy, sae = world
    port = free_port()
    out_dir = tmp_path / "out"
    cmd = [
        PAI,
        "replay",
        "--dataset-repo-id",
        "pai/img",
        "--root",
        str(base / "ds"),
        "--episodes",
        "0",
        "--policy-path",
        str(policy),
        "--sae-path",
        str(sae),
        "--output-dir",
        str(out_dir),
        "--no-video",
        "--no-mcap",
        "--no-progress",
        "--foxglove",
        str(port),
        "--foxglove-keep",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 1200  # imports, policy loading and 12 frames on a loaded CPU
        while not any("with playback controls" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert any(line.startswith("replayed 12 frames") for line in lines), "".join(lines)
        assert f"ws://127.0.0.1:{port}" in "".join(lines)

        client = FoxgloveClient(port)  # connects late: the replay is over
        client.wait(lambda: client.server_info, 30, "server info")
        info = client.server_info
        times = [round(t * 1e9) for t in pq.read_table(out_dir / "attention.parquet")["timestamp"].to_pylist()]
        assert len(times) == 12 and abs(times[-1] - 1_100_000_000) < 1000  # 10 fps (float32 timestamps)
        assert {"time", "playbackControl"} <= set(info["capabilities"])
        assert (info["dataStartTime"], info["dataEndTime"]) == (
            {"sec": 0, "nsec": times[0]},
            {"sec": 1, "nsec": times[-1] - 1_000_000_000},
        )
        client.wait(lambda: any(s.status == "Ended" for s in client.states), 60, "the end of playback")
        alarms = client.on(f"{NS}/alarm")
        ood = pq.read_table(out_dir / "ood.parquet").to_pandas()
        assert [m.log_time for m in alarms] == times
        assert [client.decode(m).data for m in alarms] == ood["alarm"].tolist() == [False, False] + [True] * 10
        np.testing.assert_allclose(
            [client.decode(m).data for m in client.on(f"{NS}/ood_score")], ood["score"], rtol=1e-5
        )
        assert 0.7 < alarms[-1].at - alarms[0].at < 5.0  # 1.1 s of recording at speed 1
        assert client.on(f"{NS}/feature_names") and len(client.on(f"{NS}/overlay/front")) == 12
        assert max(t for _at, t in client.times) == times[-1]

        n = len(client.messages)
        client.playback(PAUSE, seek_ns=450_000_000, request_id="seek")
        client.wait(lambda: [m for m in client.messages[n:] if m.topic == f"{NS}/alarm"], 10, "the sought frame")
        reply = next(s for s in client.states if s.request_id == "seek")
        assert reply.did_seek and reply.status == "Paused" and reply.current_time == 450_000_000
        time.sleep(0.3)
        assert [m.log_time for m in client.messages[n:] if m.topic == f"{NS}/alarm"] == [times[4]]
        wrist = client.decode(next(m for m in client.messages[n:] if m.topic == f"{NS}/overlay/wrist"))
        assert (wrist.height, wrist.width) == (64, 64)

        n = len(client.messages)
        client.playback(PLAY, speed=4.0, request_id="fast")
        client.wait(lambda: sum(s.status == "Ended" for s in client.states) == 2, 20, "the second end")
        rest = [m for m in client.messages[n:] if m.topic == f"{NS}/alarm"]
        assert [m.log_time for m in rest] == times[5:]
        assert rest[-1].at - rest[0].at < 0.6  # 0.6 s of recording at 4x: 0.15 s
        client.close()

        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=300) == 0, "".join(lines)
        except subprocess.TimeoutExpired:
            raise AssertionError("Ctrl-C did not end the command:\n" + "".join(lines)) from None
        assert any("stopped serving" in line for line in lines)
        assert (out_dir / "report.html").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
