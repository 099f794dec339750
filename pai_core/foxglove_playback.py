"""Serve a finished run again with Foxglove's playback controls (``pai replay --foxglove-keep``).

A ``Recording`` (what the live server sent, ``foxglove_live``) is served on the same port with the
foxglove-sdk capabilities that make Foxglove show a seekable timeline: ``playbackControl`` (the data's time
range in the server info; play, pause, seek and speed requests from the app) and ``time`` (the playback
cursor). One thread reads the MCAP and sends frames at their recorded pace times the requested speed; a
seek sends the frame at the new time at once, also while paused. Playback starts by itself when the first
client subscribes (as LeRobot's Foxglove dataset playback does) and ends paused at the last frame
(``Ended``); play after the end starts from the beginning.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

from foxglove.websocket import (
    Capability,
    ChannelView,
    Client,
    PlaybackCommand,
    PlaybackControlRequest,
    PlaybackState,
    PlaybackStatus,
    ServerListener,
)

from .foxglove_live import FoxgloveConfig, Recording, channel, start_server

#: longest step of the playback cursor per tick, so a stall does not send a burst of frames.
MAX_TICK_S = 0.25
TICK_S = 1 / 60


@dataclass
class _State:
    status: PlaybackStatus
    cursor: int  # ns: playback time
    speed: float = 1.0
    next_index: int = 0  # the next frame to send while playing
    show: int | None = None  # a frame to send now (after a seek)
    autoplay: bool = True


class PlaybackServer:
    """Serves ``recording`` with playback controls until ``close()``, which closes the recording's file."""

    def __init__(
        self, recording: Recording, config: FoxgloveConfig | None = None, autoplay: bool = True, retry_s: float = 3.0
    ):
        import foxglove
        from mcap.reader import make_reader

        if not recording.times:
            recording.file.close()
            raise ValueError("PlaybackServer: the recording holds no frame")
        self.config = config or FoxgloveConfig()
        self.times = list(recording.times)
        self.latched = dict(recording.latched)
        self._file = recording.file
        self._file.seek(0)
        self._reader = make_reader(self._file)
        summary = self._reader.get_summary()
        schemas = summary.schemas if summary else {}
        self.context = foxglove.Context()
        self._channels = {}
        for ch in summary.channels.values() if summary else []:
            schema = schemas.get(ch.schema_id)
            if schema is None:
                raise RuntimeError(f"the recording's channel {ch.topic} has no schema")
            self._channels[ch.topic] = channel(self.context, ch.topic, schema.name, schema.data)
        self._lock = threading.Lock()
        self._state = _State(PlaybackStatus.Paused, self.times[0], autoplay=autoplay)
        self._closed = threading.Event()
        try:
            self.server = start_server(
                self.config,
                self.context,
                retry_s=retry_s,
                server_listener=_Listener(self),
                capabilities=[Capability.Time],
                playback_time_range=(self.times[0], self.times[-1]),
            )
        except BaseException:
            self._file.close()
            raise
        self.server.broadcast_time(self.times[0])
        self._thread = threading.Thread(target=self._play, name="pai-foxglove-playback", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def status(self) -> PlaybackStatus:
        with self._lock:
            return self._state.status

    def index_at(self, t: int) -> int:
        """The frame shown at time ``t``: the last one logged at or before it."""
        return max(0, min(len(self.times) - 1, bisect.bisect_right(self.times, t) - 1))

    # -------------------------------------------------------------------------------- client requests
    def request(self, req: PlaybackControlRequest) -> PlaybackState:
        with self._lock:
            s, did_seek = self._state, False
            if req.seek_time is not None:
                s.cursor = max(self.times[0], min(self.times[-1], int(req.seek_time)))
                s.show = self.index_at(s.cursor)
                s.next_index = s.show + 1
                did_seek = True
            if req.playback_speed and req.playback_speed > 0:
                s.speed = float(req.playback_speed)
            if req.playback_command == PlaybackCommand.Play:
                at_end = s.status == PlaybackStatus.Ended or s.next_index >= len(self.times)
                if at_end and req.seek_time is None:
                    s.cursor, s.show, s.next_index, did_seek = self.times[0], 0, 1, True
                s.status = PlaybackStatus.Playing
            elif req.playback_command == PlaybackCommand.Pause:
                s.status = PlaybackStatus.Paused
            s.autoplay = False  # the user is in charge now
            return PlaybackState(s.status, s.cursor, s.speed, did_seek, req.request_id or "")

    def subscribed(self, topic: str) -> None:
        start = False
        with self._lock:
            s = self._state
            if s.autoplay and s.status == PlaybackStatus.Paused:
                s.autoplay, s.status, start = False, PlaybackStatus.Playing, True
            cursor, speed = s.cursor, s.speed
        if topic in self.latched:
            self._channels[topic].log(self.latched[topic], log_time=self.times[0])
        if start:
            self.server.broadcast_playback_state(PlaybackState(PlaybackStatus.Playing, cursor, speed, False, ""))

    # --------------------------------------------------------------------------------------- playback
    def _play(self) -> None:
        prev = time.monotonic()
        while not self._closed.wait(TICK_S):
            now = time.monotonic()
            dt, prev = min(now - prev, MAX_TICK_S), now
            ended = False
            with self._lock:
                s = self._state
                seek = s.show is not None
                send = [s.show] if s.show is not None else []
                s.show = None
                if s.status == PlaybackStatus.Playing:
                    s.cursor = min(self.times[-1], s.cursor + int(dt * 1e9 * s.speed))
                    stop = bisect.bisect_right(self.times, s.cursor)
                    send.extend(range(s.next_index, stop))
                    s.next_index = max(s.next_index, stop)
                    if s.next_index >= len(self.times):
                        s.status, s.cursor, ended = PlaybackStatus.Ended, self.times[-1], True
                cursor, speed, playing = s.cursor, s.speed, s.status == PlaybackStatus.Playing
            if not (send or ended or playing):
                continue
            if seek:  # a jump: panels start over, so latched topics too
                self._resend_latched()
            for i in send:
                if self._closed.is_set():
                    return
                self._send_frame(i)
            self.server.broadcast_time(cursor)
            if ended:
                self.server.broadcast_playback_state(PlaybackState(PlaybackStatus.Ended, cursor, speed, False, ""))

    def _resend_latched(self) -> None:
        for topic, data in self.latched.items():
            self._channels[topic].log(data, log_time=self.times[0])

    def _send_frame(self, i: int) -> None:
        t = self.times[i]
        self.server.broadcast_time(t)
        for _schema, ch, msg in self._reader.iter_messages(starting_at=t, ending_at=t):
            self._channels[ch.topic].log(msg.data, log_time=msg.log_time)

    # ---------------------------------------------------------------------------------------- control
    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` (True) or ``timeout`` seconds (False); Ctrl-C interrupts it."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            left = 0.5 if end is None else min(0.5, end - time.monotonic())
            if left <= 0:
                return False
            self._closed.wait(left)
        return True

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=5)
        for ch in self._channels.values():
            ch.close()
        self.server.stop()
        self._file.close()

    def __enter__(self) -> PlaybackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Listener(ServerListener):
    def __init__(self, owner: PlaybackServer):
        self.owner = owner

    def on_playback_control_request(self, playback_control_request: PlaybackControlRequest) -> PlaybackState:
        return self.owner.request(playback_control_request)

    def on_subscribe(self, client: Client, channel_view: ChannelView) -> None:
        self.owner.subscribed(channel_view.topic)


__all__ = ["PlaybackServer"]
