"""``--foxglove``: the replay is served on a local Foxglove WebSocket server while it runs."""

from __future__ import annotations

import json
import socket
import threading
import time

from pai_core.pipeline import Pipeline
from pai_core.replay.api import ReplayOptions, replay_episode
from pai_core.sources.dataset import open_dataset
from pai_core.testing import make_lerobot_dataset
from tests.conftest import TWO_CAMERAS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_foxglove_client_sees_the_node_topics_advertised_with_ros2_schemas(tmp_path, policy_dir):
    from websockets.sync.client import connect

    make_lerobot_dataset(tmp_path / "ds", repo_id="pai/img", cameras=TWO_CAMERAS, episodes=1, frames=12)
    port = _free_port()
    advertised: dict[str, dict] = {}
    received = []

    def client() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"], open_timeout=2) as ws:
                    for raw in ws:
                        if isinstance(raw, str):
                            msg = json.loads(raw)
                            if msg.get("op") == "advertise":
                                for ch in msg["channels"]:
                                    advertised[ch["topic"]] = ch
                                    ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                                        {"id": ch["id"], "channelId": ch["id"]}]}))
                        else:
                            received.append(raw)
                return
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    pipeline = Pipeline.load(str(policy_dir))
    options = ReplayOptions(tmp_path / "out", batch_size=2, video=False, mcap=False, foxglove_port=port, progress=False)
    result = replay_episode(open_dataset("pai/img", tmp_path / "ds"), 0, pipeline, options)
    thread.join(timeout=10)
    assert result.accounting.frames_processed == 12
    assert advertised["/pai_introspector/overlay/front"]["schemaName"] == "sensor_msgs/msg/Image"
    assert advertised["/pai_introspector/attention_share"]["schemaEncoding"] == "ros2msg"
    assert advertised["/pai_introspector/attention_share"]["encoding"] == "cdr"
    assert len(received) > 0  # binary message data reached the subscribed client
