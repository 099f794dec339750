"""Foxglove live: pai's outputs on a Foxglove WebSocket server (foxglove-sdk) while they are computed.

Used by ``pai replay --foxglove`` and, through ``FoxgloveLive``, by your own LeRobot control loop. Every
topic is one of the live node's (``/pai_introspector/overlay/<camera>``, ``attention_share``, ``features``,
``ood_score``, ``alarm``, ...) as ROS 2 CDR with its ``ros2msg`` schema, so the node, ``replay.mcap`` and
this server open in the same Foxglove layout (``config/foxglove_layout.json``).

Channels are created when the server starts, so a client that connects before the first frame already
sees every topic. ``FoxgloveConfig(record=True)`` keeps what was sent (an MCAP in an unnamed temporary
file, gone when the process ends, even if it is killed) so that ``finish()`` can hand it to
``foxglove_playback.PlaybackServer``, which serves it again with Foxglove's playback controls.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO

import foxglove
from foxglove.websocket import Capability, ChannelView, Client, ServerListener

from . import topics
from .errors import UsageError
from .overlay import OverlayConfig
from .replay.encoding import Encoded, encode, msgdef
from .ros_convert import feature_names_message, frame_messages, ns_to_stamp

if TYPE_CHECKING:
    from .foxglove_playback import PlaybackServer
    from .pipeline import Frame, Pipeline

log = logging.getLogger(__name__)

#: the WebSocket subprotocol foxglove-sdk's server speaks (Foxglove WebSocket protocol v1 messages).
SUBPROTOCOL = "foxglove.sdk.v1"
# The SDK queues a status per client and ``stop()`` drops what is still queued (no flush exists), so a
# client told "the run is over" is given this long to receive it before its connection closes.
STATUS_GRACE_S = 0.5
#: topics the node publishes transient-local: re-sent to every client that subscribes late.
LATCHED = (topics.FEATURE_NAMES,)


@dataclass
class FoxgloveConfig:
    """Args:
    port: TCP port to serve on (0: a free port, ``FoxgloveServer.port`` says which). None: start no
        server and log into foxglove-sdk's default context instead, so the topics join a server already
        running in this process (LeRobot's ``--display_mode=foxglove`` / ``init_foxglove()``, or your own
        ``foxglove.start_server()``).
    host: interface to listen on; "127.0.0.1" serves this machine only, "0.0.0.0" every interface (a
        Foxglove app on another machine).
    name: server name the Foxglove app shows.
    compressed: also send each overlay as a JPEG ``CompressedImage`` (what the shipped layout shows, and
        far less to send over a network than the raw ``Image``).
    namespace: node namespace of the topics (the node's default "/pai_introspector").
    overlay: overlay look (``FoxgloveLive`` only; replay passes its own).
    record: keep every message sent, for ``FoxgloveServer.finish`` and playback after the run.
    """

    port: int | None = 8765
    host: str = "127.0.0.1"
    name: str = "pai"
    compressed: bool = True
    namespace: str = f"/{topics.NODE_NAME}"
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    record: bool = False

    def __post_init__(self) -> None:
        if self.port is not None and not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(
                f"FoxgloveConfig.port={self.port!r} must be a TCP port 0-65535, or None to join a "
                "server already running in this process"
            )
        if not self.host:
            raise ValueError("FoxgloveConfig.host is empty; use '127.0.0.1' (this machine) or '0.0.0.0' (all)")
        if not self.namespace.startswith("/"):
            raise ValueError(f"FoxgloveConfig.namespace={self.namespace!r} must be absolute (start with '/')")
        if self.record and self.port is None:
            raise ValueError("FoxgloveConfig.record needs a server of its own: set a port (0 for any free one)")


def output_topics(
    pipeline: Pipeline, compressed: bool = True, namespace: str = f"/{topics.NODE_NAME}"
) -> dict[str, str]:
    """Absolute topic -> ROS type of every message ``ros_convert.frame_messages`` gives for ``pipeline``
    (what a server advertises before the first frame). A topic missing here still reaches clients: the
    server creates its channel on the first message."""
    out: dict[str, str] = {}

    def add(topic: str, msgtype: str) -> None:
        out[topics.resolve(topic, namespace=namespace)] = msgtype

    for camera in pipeline.engine.camera_names:
        short = topics.camera_short(camera)
        add(topics.OVERLAY.format(camera=short), "sensor_msgs/msg/Image")
        if compressed:
            add(topics.OVERLAY_COMPRESSED.format(camera=short), "sensor_msgs/msg/CompressedImage")
    add(topics.ATTENTION_SHARE, "std_msgs/msg/Float32MultiArray")
    if pipeline.extractor is not None:
        add(topics.FEATURES, "std_msgs/msg/Float32MultiArray")
        add(topics.FEATURE_NAMES, "std_msgs/msg/String")
        add(topics.OOD_SCORE, "std_msgs/msg/Float32")
        if pipeline.threshold is not None:
            add(topics.OOD_THRESHOLD, "std_msgs/msg/Float32")
        for name in pipeline.signal_thresholds():
            add(topics.SIGNAL.format(name=name), "std_msgs/msg/Float32")
            add(topics.SIGNAL_THRESHOLD.format(name=name), "std_msgs/msg/Float32")
    add(topics.ALARM, "std_msgs/msg/Bool")
    add(topics.ACTION, "std_msgs/msg/Float32MultiArray")
    add(topics.ACTION_CHUNK, "std_msgs/msg/Float32MultiArray")
    return out


def start_server(
    config: FoxgloveConfig, context: foxglove.Context, retry_s: float = 0.0, **kwargs: Any
) -> foxglove.WebSocketServer:
    """``foxglove.start_server`` with one clear error when the port cannot be had. ``retry_s``: keep trying
    that long (the port a server stopped a moment ago can take a few milliseconds to free)."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return foxglove.start_server(
                name=config.name, host=config.host, port=config.port, context=context, **kwargs
            )
        except RuntimeError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            reason = str(exc).split("FoxgloveError: ", 1)[-1]
            raise UsageError(
                f"Foxglove server could not listen on {config.host}:{config.port}: {reason}; "
                "choose another port (pai replay --foxglove PORT)"
            ) from None


def channel(context: foxglove.Context, topic: str, msgtype: str, schema: bytes | None = None) -> foxglove.Channel:
    """A CDR channel with the type's ``ros2msg`` schema (what Foxglove decodes ROS 2 messages with)."""
    data = schema if schema is not None else msgdef(msgtype).encode()
    return foxglove.Channel(
        topic,
        schema=foxglove.Schema(name=msgtype, encoding="ros2msg", data=data),
        message_encoding="cdr",
        context=context,
    )


@dataclass
class Recording:
    """What a live server sent, for playback: an MCAP of every message and each frame's log time.

    Args:
        file: the finished MCAP (an unnamed temporary file; whoever takes the recording closes it).
        times: sorted log times (ns) of the frames sent, one per frame.
        latched: topic -> the last message of a latched topic (``LATCHED``), re-sent on subscribe and seek.
    """

    file: BinaryIO
    times: list[int]
    latched: dict[str, bytes]


class FoxgloveServer:
    """One Foxglove WebSocket server with a CDR channel per topic, created up front, and the server's
    time capability (the time of the frame being sent, so plots follow recording time, not arrival)."""

    def __init__(self, channels: dict[str, str], config: FoxgloveConfig | None = None):
        self.config = config or FoxgloveConfig()
        self._latched: dict[str, tuple[bytes, int]] = {}
        self._times: list[int] = []
        self._last_time: int | None = None
        self._mcap = self._record_file = None
        self.server = None
        self.context = foxglove.Context.default() if self.config.port is None else foxglove.Context()
        # channels before the server: a client that connects at once gets them all in its first advertisement
        self._channels = {topic: channel(self.context, topic, msgtype) for topic, msgtype in channels.items()}
        if self.config.port is not None:
            if self.config.record:
                self._record_file = tempfile.TemporaryFile(prefix="pai-foxglove-", suffix=".mcap")
                self._mcap = foxglove.open_mcap(self._record_file, context=self.context)
            self.server = start_server(
                self.config, self.context, capabilities=[Capability.Time], server_listener=_Resend(self)
            )
        self._latched_topics = {topics.resolve(t, namespace=self.config.namespace) for t in LATCHED}
        self._closed = False

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    def watched(self, topic: str | None = None) -> bool:
        """Whether a client (or the recording) subscribes to ``topic``, or to any topic."""
        chans = self._channels.values() if topic is None else [self._channels.get(topic)]
        return any(ch is not None and ch.has_sinks() for ch in chans)

    def log(self, message: Encoded) -> None:
        """Send one encoded message now (to every client subscribed to its topic)."""
        ch = self._channels.get(message.topic)
        if ch is None:
            ch = self._channels[message.topic] = channel(self.context, message.topic, message.msgtype)
        t = int(message.log_time_ns)
        if t != self._last_time:  # a new frame: tell clients its time first
            self._last_time = t
            if self.server is not None:
                self.server.broadcast_time(t)
            if self.config.record and (not self._times or t > self._times[-1]):
                self._times.append(t)
        if message.topic in self._latched_topics:
            self._latched[message.topic] = (message.data, t)
        ch.log(message.data, log_time=t)

    def resend_latched(self, topic: str) -> None:
        """A late subscriber of a latched topic gets its last message (as ROS transient-local does)."""
        kept = self._latched.get(topic)
        ch = self._channels.get(topic)
        if kept is not None and ch is not None:
            ch.log(kept[0], log_time=kept[1])

    def finish(self) -> Recording | None:
        """Stop serving live and return what was sent (``record``), or None without recording."""
        if self._closed:
            return None
        recording = None
        if self.server is not None and self.config.record:
            self.server.publish_status("pai: the run is over; reconnect to play it back", foxglove.StatusLevel.Info)
            time.sleep(STATUS_GRACE_S)
        self.close(keep_recording=True)
        if self._record_file is not None:
            recording = Recording(
                self._record_file, list(self._times), {topic: data for topic, (data, _t) in self._latched.items()}
            )
        return recording

    def close(self, keep_recording: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for ch in self._channels.values():
            ch.close()
        if self.server is not None:
            self.server.stop()
        if self._mcap is not None:
            self._mcap.close()
        if self._record_file is not None and not keep_recording:
            self._record_file.close()


class _Resend(ServerListener):
    """Re-sends latched topics to late subscribers."""

    def __init__(self, owner: FoxgloveServer):
        self.owner = owner

    def on_subscribe(self, client: Client, channel_view: ChannelView) -> None:
        self.owner.resend_latched(channel_view.topic)


class FoxgloveLive:
    """Serve a ``Pipeline``'s frames to Foxglove from your own control loop: attention overlays, attention
    shares, SAE features, OOD score and threshold, the alarm and the action, on the node's topics.

    ``log(frame)`` returns at once: a worker thread renders the overlays, encodes and sends (the control
    loop never waits for Foxglove). When the worker falls behind, the oldest waiting frame is dropped
    (``dropped`` counts them) so what Foxglove shows stays current. While no client subscribes (and
    nothing is recorded) frames are not rendered at all (``unwatched`` counts them).

    Args:
        pipeline: the pipeline whose frames are logged (its cameras, features and signals decide the topics).
        config: server settings; ``FoxgloveConfig(port=None)`` joins a server already running in this process.
        background: False: render and send in ``log`` itself (deterministic; for tests and replays).
        queue: frames that may wait for the worker.
    """

    def __init__(
        self, pipeline: Pipeline, config: FoxgloveConfig | None = None, background: bool = True, queue: int = 2
    ):
        if queue < 1:
            raise ValueError(f"FoxgloveLive queue={queue} must be at least 1")
        self.pipeline, self.config = pipeline, config or FoxgloveConfig()
        self.server = FoxgloveServer(
            output_topics(pipeline, self.config.compressed, self.config.namespace), self.config
        )
        self.sent = self.dropped = self.unwatched = 0
        self._names_sent = False
        self._pending: collections.deque = collections.deque()
        self._queue = queue
        self._cond = threading.Condition()
        self._busy = self._stop = False
        self._error: BaseException | None = None
        self._worker = None
        if background:
            self._worker = threading.Thread(target=self._work, name="pai-foxglove", daemon=True)
            self._worker.start()

    @property
    def url(self) -> str:
        return self.server.url

    def log(self, frame: Frame, time_ns: int | None = None) -> None:
        """Send ``frame`` (``Pipeline.step``'s output). Its time is ``time_ns``, else the observation's
        ``stamp_ns``, else now (wall clock). Keep the observation's arrays unchanged after the call."""
        if self._error is not None:
            raise RuntimeError(f"Foxglove worker failed: {self._error}") from self._error
        t = (
            int(time_ns)
            if time_ns is not None
            else (int(frame.observation.stamp_ns) if frame.observation.stamp_ns is not None else time.time_ns())
        )
        if self._worker is None:
            self._send(frame, t)
            return
        with self._cond:
            if len(self._pending) >= self._queue:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((frame, t))
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every logged frame is sent; False when ``timeout`` ran out first."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _send(self, frame: Frame, t: int) -> None:
        if not self.server.watched():
            self.unwatched += 1
            return
        ns = self.config.namespace
        if not self._names_sent and self.pipeline.n_features:
            self.server.log(encode(feature_names_message(self.pipeline), ns, t))
        self._names_sent = True
        for message in frame_messages(
            frame, self.pipeline, self.config.overlay, compressed=self.config.compressed, stamp=ns_to_stamp(t)
        ):
            self.server.log(encode(message, ns, t))
        self.sent += 1

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if not self._pending:
                    return
                frame, t = self._pending.popleft()
                self._busy = True
            try:
                self._send(frame, t)
            except BaseException as exc:  # surfaced by the next log() call
                log.exception("Foxglove worker failed")
                self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self.flush()
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._worker.join(timeout=10)
            self._worker = None

    def finish(self) -> PlaybackServer | None:
        """End the live stream. With ``record``, serve what was sent again with playback controls (play,
        pause, seek, speed) on the same port and return that server (``wait()`` / ``close()`` it)."""
        from .foxglove_playback import PlaybackServer

        self._stop_worker()
        port = self.server.port  # the port playback takes over (also when it was chosen freely)
        recording = self.server.finish()
        if recording is None or not recording.times:
            if recording is not None:
                recording.file.close()
            return None
        return PlaybackServer(recording, replace(self.config, port=port))

    def close(self) -> None:
        self._stop_worker()
        self.server.close()

    def __enter__(self) -> FoxgloveLive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SUBPROTOCOL", "FoxgloveConfig", "FoxgloveLive", "FoxgloveServer", "Recording", "output_topics"]
