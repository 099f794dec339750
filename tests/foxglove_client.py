"""A real Foxglove WebSocket client for the tests: the ``websockets`` package speaking the Foxglove
WebSocket protocol v1 (subprotocol ``foxglove.sdk.v1``, the one foxglove-sdk's server accepts) on loopback.

It records what a client receives (server info, advertisements, message data, time, playback state) with
arrival times, subscribes to every advertised channel, sends playback control requests, and decodes CDR
payloads with the ros2msg schema text the server advertised (``mcap_ros2``'s dynamic decoder: the schema
as received, not pai's own type store).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from dataclasses import dataclass, field

SUBPROTOCOL = "foxglove.sdk.v1"
PLAY, PAUSE = 0, 1
STATUS = {0: "Playing", 1: "Paused", 2: "Buffering", 3: "Ended"}


@dataclass
class Received:
    topic: str
    log_time: int
    data: bytes
    at: float  # time.monotonic() on arrival


@dataclass
class PlaybackStateMsg:
    status: str
    current_time: int
    speed: float
    did_seek: bool
    request_id: str
    at: float


@dataclass
class FoxgloveClient:
    """Connects to ws://127.0.0.1:PORT (retrying until ``connect_timeout``) in a thread of its own."""

    port: int
    subscribe: bool = True
    connect_timeout: float = 60.0
    server_info: dict | None = None
    channels: dict[int, dict] = field(default_factory=dict)
    advertised_at: dict[str, float] = field(default_factory=dict)
    messages: list[Received] = field(default_factory=list)
    times: list[tuple[float, int]] = field(default_factory=list)
    states: list[PlaybackStateMsg] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    closed_at: float | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._ws = None
        self._decoders: dict[int, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- receiving
    def _run(self) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + self.connect_timeout
        while not self._stop.is_set():
            try:
                ws = connect(f"ws://127.0.0.1:{self.port}", subprotocols=[SUBPROTOCOL], open_timeout=2, max_size=None)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.error = TimeoutError(f"no Foxglove server on port {self.port}")
                    return
                time.sleep(0.05)
        else:
            return
        self._ws = ws
        try:
            for raw in ws:
                if isinstance(raw, str):
                    self._on_json(json.loads(raw))
                else:
                    self._on_binary(raw)
        except Exception as exc:  # connection closed by the server
            if not self._stop.is_set():
                self.error = exc
        finally:
            self.closed_at = time.monotonic()

    def _on_json(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "serverInfo":
            self.server_info = msg
        elif op == "advertise":
            now = time.monotonic()
            subs = []
            for ch in msg["channels"]:
                self.channels[ch["id"]] = ch
                self.advertised_at.setdefault(ch["topic"], now)
                subs.append({"id": ch["id"], "channelId": ch["id"]})
            if self.subscribe and subs:
                self._ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
        elif op == "status":
            self.statuses.append(msg)

    def _on_binary(self, raw: bytes) -> None:
        now = time.monotonic()
        op = raw[0]
        if op == 1:  # message data: subscription id, log time, payload
            sub, log_time = struct.unpack_from("<IQ", raw, 1)
            self.messages.append(Received(self.channels[sub]["topic"], log_time, bytes(raw[13:]), now))
        elif op == 2:  # time
            self.times.append((now, struct.unpack_from("<Q", raw, 1)[0]))
        elif op == 5:  # playback state
            status, current, speed, did_seek, n = struct.unpack_from("<BQfBI", raw, 1)
            rid = raw[1 + 18 : 1 + 18 + n].decode()
            self.states.append(PlaybackStateMsg(STATUS[status], current, speed, bool(did_seek), rid, now))

    # --------------------------------------------------------------------------------------- queries
    def topics(self) -> dict[str, dict]:
        return {ch["topic"]: ch for ch in self.channels.values()}

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def wait(self, predicate, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            if isinstance(self.error, TimeoutError):  # never connected
                break
            time.sleep(0.02)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (client error: {self.error!r}; "
            f"topics {sorted(self.topics())}, {len(self.messages)} messages)"
        )

    def decode(self, message: Received):
        """The CDR payload decoded with the schema advertised for its topic."""
        from mcap_ros2._dynamic import generate_dynamic

        ch = self.topics()[message.topic]
        assert ch["encoding"] == "cdr" and ch["schemaEncoding"] == "ros2msg", ch
        if ch["id"] not in self._decoders:
            self._decoders[ch["id"]] = generate_dynamic(ch["schemaName"], ch["schema"])[ch["schemaName"]]
        return self._decoders[ch["id"]](message.data)

    # ---------------------------------------------------------------------------------------- sending
    def playback(self, command: int, speed: float = 1.0, seek_ns: int | None = None, request_id: str = "r") -> None:
        """A playback control request (binary opcode 3): command, speed, seek time, request id."""
        rid = request_id.encode()
        payload = struct.pack("<BBfBQI", 3, command, speed, seek_ns is not None, seek_ns or 0, len(rid)) + rid
        self._ws.send(payload)

    def close(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._ws.close()
        self._thread.join(timeout=5)
