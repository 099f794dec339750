"""Foxglove from your own control loop (``pai_core.foxglove_live.FoxgloveLive``): a real pipeline, a real
foxglove-sdk server, and a real WebSocket client on 127.0.0.1 that decodes the CDR it receives with the
schemas the server advertised."""

from __future__ import annotations

import json
import socket
import time

import foxglove
import numpy as np
import pytest

from pai_core.errors import InputError
from pai_core.foxglove_live import FoxgloveConfig, FoxgloveLive, output_topics
from pai_core.pipeline import Pipeline
from tests.conftest import random_observation
from tests.foxglove_client import PAUSE, PLAY, FoxgloveClient
from tests.replay_helpers import make_sae

NS = "/pai_introspector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def alarm_pipeline(policy_dir, tmp_path_factory):
    """The two-camera test policy with an SAE whose threshold (0) every frame exceeds: the 3-of-5 alarm
    rises at the third frame and stays latched."""
    sae = make_sae(tmp_path_factory.mktemp("fox") / "sae", d_in=64, threshold=0.0)
    return Pipeline.load(str(policy_dir), str(sae))


def _subscribed(fox: FoxgloveLive, client: FoxgloveClient, n: int) -> None:
    client.wait(lambda: len(client.topics()) >= n, 30, "the advertisement")
    client.wait(
        lambda: all(fox.server.watched(t) for t in client.topics() if t.startswith(NS)), 30, "the subscriptions"
    )


def test_a_control_loop_shows_attention_features_and_the_alarm_in_foxglove(alarm_pipeline):
    pipe = alarm_pipeline
    pipe.reset()
    expected = output_topics(pipe)
    rng = np.random.default_rng(0)
    port = free_port()
    with FoxgloveLive(pipe, FoxgloveConfig(port=port)) as fox:
        client = FoxgloveClient(port)
        _subscribed(fox, client, len(expected))
        assert {t: c["schemaName"] for t, c in client.topics().items()} == expected
        frames, t0 = [], 1_700_000_000_000_000_000
        for i in range(5):
            frame = pipe.step(random_observation(pipe.engine, rng, t=0.1 * i))
            fox.log(frame, time_ns=t0 + i * 100_000_000)
            frames.append(frame)
        assert fox.flush(30)
        client.wait(lambda: len(client.on(f"{NS}/alarm")) == 5, 30, "five alarm messages")
        assert fox.sent == 5 and fox.dropped == 0

    alarm = [client.decode(m).data for m in client.on(f"{NS}/alarm")]
    assert alarm == [f.alarm.active for f in frames] == [False, False, True, True, True]
    assert [m.log_time for m in client.on(f"{NS}/alarm")] == [t0 + i * 100_000_000 for i in range(5)]
    for msg, frame in zip(client.on(f"{NS}/attention_share"), frames):
        r = frame.result
        shares = [r.latent_share, r.state_share] + [r.camera_share[c.name] for c in r.layout.cameras]
        decoded = client.decode(msg)
        assert decoded.layout.dim[0].label == "latent,state,front,wrist"
        np.testing.assert_allclose(decoded.data, shares, rtol=1e-6)
    features = [np.asarray(client.decode(m).data) for m in client.on(f"{NS}/features")]
    assert len(features) == 5 and features[0].size == pipe.n_features
    np.testing.assert_allclose(features[4], frames[4].features, rtol=1e-6)
    scores = [client.decode(m).data for m in client.on(f"{NS}/ood_score")]
    np.testing.assert_allclose(scores, [f.ood_score for f in frames], rtol=1e-6)
    names = json.loads(client.decode(client.on(f"{NS}/feature_names")[0]).data)
    assert names == pipe.feature_names()
    front = client.decode(client.on(f"{NS}/overlay/front")[0])
    assert (front.height, front.width, front.encoding) == (96, 128, "rgb8") and len(front.data) == 96 * 128 * 3
    assert (front.header.stamp.sec, front.header.stamp.nanosec) == divmod(t0, 1_000_000_000)
    jpeg = client.decode(client.on(f"{NS}/overlay/wrist/compressed")[0])
    assert jpeg.format == "jpeg" and bytes(jpeg.data[:2]) == b"\xff\xd8"
    # the node's rule: no action while the alarm holds
    assert len(client.on(f"{NS}/action")) == 2 and len(client.on(f"{NS}/action_chunk")) == 2
    # the time capability carries each frame's time
    assert "time" in client.server_info["capabilities"]
    assert [t for _at, t in client.times][-1] == t0 + 4 * 100_000_000
    client.close()


def test_a_client_that_connects_mid_run_gets_the_latched_feature_names(alarm_pipeline):
    pipe = alarm_pipeline
    pipe.reset()
    rng = np.random.default_rng(1)
    port = free_port()
    with FoxgloveLive(pipe, FoxgloveConfig(port=port, compressed=False), background=False) as fox:
        first = FoxgloveClient(port)
        _subscribed(fox, first, len(output_topics(pipe, compressed=False)))
        fox.log(pipe.step(random_observation(pipe.engine, rng)))
        first.wait(lambda: first.on(f"{NS}/alarm"), 30, "the first frame")
        late = FoxgloveClient(port)
        late.wait(lambda: late.on(f"{NS}/feature_names"), 30, "feature names re-sent to the late client")
        assert json.loads(late.decode(late.on(f"{NS}/feature_names")[0]).data) == pipe.feature_names()
        assert not any(t.endswith("/compressed") for t in late.topics())
        first.close()
        late.close()


def test_frames_nobody_watches_are_not_rendered(alarm_pipeline):
    pipe = alarm_pipeline
    rng = np.random.default_rng(2)
    with FoxgloveLive(pipe, FoxgloveConfig(port=0), background=False) as fox:
        for _ in range(2):
            fox.log(pipe.step(random_observation(pipe.engine, rng)))
        assert (fox.sent, fox.unwatched) == (0, 2)


def test_pai_topics_join_a_foxglove_server_already_running_in_the_process(alarm_pipeline):
    """LeRobot's ``--display_mode=foxglove`` starts ``foxglove.start_server(host, port)`` in the SDK's
    default context and logs ``/observation/state`` as JSON; ``port=None`` puts pai's topics beside them."""
    pipe = alarm_pipeline
    pipe.reset()
    port = free_port()
    server = foxglove.start_server(host="127.0.0.1", port=port)  # what lerobot's init_foxglove() does
    state = foxglove.Channel("/observation/state", schema={"type": "object"}, message_encoding="json")
    try:
        with FoxgloveLive(pipe, FoxgloveConfig(port=None), background=False) as fox:
            client = FoxgloveClient(port)
            _subscribed(fox, client, len(output_topics(pipe)) + 1)
            assert "/observation/state" in client.topics() and f"{NS}/ood_score" in client.topics()
            state.log({"scalars": [{"label": "shoulder_pan", "value": 1.0}]})
            fox.log(pipe.step(random_observation(pipe.engine, np.random.default_rng(3))))
            client.wait(lambda: client.on(f"{NS}/alarm") and client.on("/observation/state"), 30, "both")
            assert fox.server.port is None  # no server of its own
            client.close()
    finally:
        state.close()
        server.stop()


def test_after_the_loop_the_recording_is_served_with_playback_controls(alarm_pipeline):
    pipe = alarm_pipeline
    pipe.reset()
    rng = np.random.default_rng(4)
    t0, step = 5_000_000_000, 200_000_000
    fox = FoxgloveLive(pipe, FoxgloveConfig(port=0, record=True, compressed=False), background=False)
    port = fox.server.port
    watching = FoxgloveClient(port)  # connected to the live stream
    _subscribed(fox, watching, len(output_topics(pipe, compressed=False)))
    frames = []
    for i in range(6):
        frames.append(pipe.step(random_observation(pipe.engine, rng)))
        fox.log(frames[-1], time_ns=t0 + i * step)
    watching.wait(lambda: len(watching.on(f"{NS}/alarm")) == 6, 30, "the live frames")
    player = fox.finish()
    try:
        assert player.port == port
        # the live client is told the run is over, then the live server closes its connection
        watching.wait(lambda: watching.closed_at is not None, 30, "the live connection to close")
        assert any("reconnect" in s["message"] for s in watching.statuses), watching.statuses
        client = FoxgloveClient(port)
        client.wait(lambda: client.server_info, 30, "server info")
        info = client.server_info
        assert {"time", "playbackControl"} <= set(info["capabilities"])
        assert (info["dataStartTime"], info["dataEndTime"]) == ({"sec": 5, "nsec": 0}, {"sec": 6, "nsec": 0})
        # the first subscription starts playback at the recorded pace; it ends paused at the last frame
        client.wait(lambda: any(s.status == "Ended" for s in client.states), 30, "the end of playback")
        alarms = client.on(f"{NS}/alarm")
        assert [m.log_time for m in alarms] == [t0 + i * step for i in range(6)]
        assert [client.decode(m).data for m in alarms] == [f.alarm.active for f in frames]
        spread = alarms[-1].at - alarms[0].at
        assert 0.6 < spread < 3.0, spread  # 1 s of recording at speed 1
        assert client.on(f"{NS}/feature_names")
        # seek while paused: the frame at that time comes at once, with the request's id
        n = len(client.messages)
        client.playback(PAUSE, seek_ns=t0 + 2 * step + 50_000_000, request_id="seek-1")
        client.wait(lambda: any(s.request_id == "seek-1" for s in client.states), 10, "the seek's reply")
        reply = next(s for s in client.states if s.request_id == "seek-1")
        assert reply.did_seek and reply.status == "Paused" and reply.current_time == t0 + 2 * step + 50_000_000
        client.wait(lambda: [m for m in client.messages[n:] if m.topic == f"{NS}/alarm"], 10, "the frame sought")
        time.sleep(0.3)  # paused: nothing more comes
        sought = [m for m in client.messages[n:] if m.topic == f"{NS}/alarm"]
        assert [m.log_time for m in sought] == [t0 + 2 * step]
        assert client.decode(sought[0]).data is True
        # play at 4x from there to the end
        n = len(client.messages)
        client.playback(PLAY, speed=4.0, request_id="play-2")
        client.wait(lambda: sum(s.status == "Ended" for s in client.states) == 2, 10, "the second end")
        rest = [m for m in client.messages[n:] if m.topic == f"{NS}/alarm"]
        assert [m.log_time for m in rest] == [t0 + i * step for i in range(3, 6)]
        assert rest[-1].at - rest[0].at < 0.45  # 0.4 s of recording at 4x: 0.1 s
        client.close()
    finally:
        player.close()
    assert player._file.closed  # the recording (already unlinked) is released


def test_configuration_errors_name_the_field_and_a_taken_port_is_one_clear_error(alarm_pipeline):
    with pytest.raises(ValueError, match="port=70000"):
        FoxgloveConfig(port=70000)
    with pytest.raises(ValueError, match="record needs a server"):
        FoxgloveConfig(port=None, record=True)
    with pytest.raises(ValueError, match="namespace"):
        FoxgloveConfig(namespace="pai")
    with FoxgloveLive(alarm_pipeline, FoxgloveConfig(port=0)) as fox:
        with pytest.raises(InputError, match=f"could not listen on 127.0.0.1:{fox.server.port}: .*in use"):
            FoxgloveLive(alarm_pipeline, FoxgloveConfig(port=fox.server.port))
