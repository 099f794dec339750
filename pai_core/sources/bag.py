"""rosbag2 recordings as observations, read with ``rosbags`` (no ROS installation needed).

A bag is a rosbag2 folder (``metadata.yaml`` with sqlite3 or mcap storage) or a single ``.mcap`` /
``.db3`` file. Camera topics (sensor_msgs/Image or CompressedImage) and the JointState topic are mapped
to policy inputs by the node's own settings file. Inputs are combined by the node's
``ObservationAssembler``: one observation per message of the first (driving) camera, in log-time order,
with the newest message of every other input. Every message is accounted for in an ``Accounting``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BagReadError, ConfigError, ObservationError, PaiError, UsageError
from ..observation import Observation
from ..sync import ObservationAssembler
from .accounting import Accounting

if TYPE_CHECKING:
    from ..settings import PaiSettings
    from .mcap_salvage import SalvagedMcap

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"


@dataclass
class BagTopics:
    """Which bag topics feed which policy inputs.

    Args:
        cameras: camera topic -> policy image feature; the first one drives the frame rate.
        joint_states_topic: sensor_msgs/JointState topic ("" when the policy has no state input).
        joint_names: joint names in the policy's state order.
        max_age_s: inputs further apart than this are never combined.
        units: robot -> policy joint units (``units.JointUnits``), as the node applies them; None: as recorded.
    """

    cameras: dict[str, str]
    joint_states_topic: str = ""
    joint_names: list[str] = field(default_factory=list)
    max_age_s: float = 0.5
    units: Any = None

    @classmethod
    def from_settings(cls, settings: PaiSettings, policy_cameras: list[str], needs_state: bool) -> BagTopics:
        """The settings' camera map restricted to the policy's cameras (each must be mapped)."""
        mapping = {t: f for t, f in settings.camera_map.items() if f in policy_cameras}
        missing = [c for c in policy_cameras if c not in mapping.values()]
        if missing:
            raise ConfigError(
                f"The settings map no camera topic to the policy's image features {missing}; "
                f"cameras.features are {list(settings.camera_map.values())}, the policy expects {policy_cameras}"
            )
        from ..units import JointUnits

        return cls(
            mapping,
            settings.joint_states_topic if needs_state else "",
            list(settings.joint_names),
            settings.max_input_age_s,
            JointUnits.from_settings(settings) if needs_state else None,
        )


def bag_file(path: Path) -> Path:
    """A rosbag2 folder as it is; a folder without metadata.yaml that holds one .mcap/.db3 file (an MCAP
    written by another tool, a copied file) as that file."""
    if not path.is_dir() or (path / "metadata.yaml").is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise UsageError(
            f"Bag folder {path} has no metadata.yaml and no .mcap/.db3 file; pass a rosbag2 folder or "
            "an .mcap/.db3 file"
        )
    raise UsageError(
        f"Bag folder {path} has no metadata.yaml and {len(files)} recordings "
        f"({', '.join(f.name for f in files)}); pass one of them"
    )


def open_reader(path: str | Path) -> Any:  # rosbags' AnyReader, or a SalvagedMcap with the part of it we use
    """An opened reader over a rosbag2 folder, a folder holding one .mcap/.db3, or a single .mcap/.db3
    file (clear errors). A truncated .mcap that indexed readers refuse is salvaged with a stream reader
    (``mcap_salvage.SalvagedMcap``: its ``truncated`` and ``describe()`` say where it breaks off)."""
    from rosbags.highlevel import AnyReader

    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"Bag {path} does not exist; expected a rosbag2 folder (metadata.yaml) or a .mcap/.db3 file")
    path = bag_file(path)
    if path.is_file() and path.suffix not in (".mcap", ".db3"):
        raise UsageError(f"Bag file {path} is neither .mcap nor .db3")
    reader = AnyReader([path])
    try:
        reader.open()
    except Exception as exc:  # rosbags raises several types for damaged files
        if path.suffix == ".mcap":
            salvaged = _salvage(path)
            if salvaged is not None:
                return salvaged
        raise BagReadError(f"Could not open bag {path}: {type(exc).__name__}: {exc}") from exc
    return reader


def _salvage(path: Path) -> SalvagedMcap | None:
    from .mcap_salvage import SalvagedMcap

    try:
        salvaged = SalvagedMcap(path)
    except Exception:  # not even the start is readable: report the indexed reader's error
        return None
    return salvaged if salvaged.truncated and any(c.msgcount for c in salvaged.connections) else None


class BagSource:
    """Iterates the observations of one bag; ``len()`` is the number of driving-camera frames.

    Use as a context manager (closes the reader). Iteration raises ``BagReadError`` when the bag breaks
    off; observations before that point have been yielded and are counted.

    Args:
        keep_messages: also put the recorded messages that make each observation into
            ``obs.extra["messages"]``: ``(topic, msgtype, raw CDR)`` per input, the other inputs first and the
            driving camera last (what ``bag_replay`` publishes into the live node).
    """

    def __init__(
        self, path: str | Path, topics: BagTopics, accounting: Accounting | None = None, keep_messages: bool = False
    ):
        self.path = Path(path)
        self.topics = topics
        self.accounting = accounting if accounting is not None else Accounting()
        self.keep_messages = keep_messages
        self.reader = open_reader(self.path)
        try:
            self._connections = self._check_topics()
        except PaiError:
            self.reader.close()
            raise
        self.driving = next(iter(topics.cameras))

    def _check_topics(self) -> list:
        found: dict[str, list] = {}
        for conn in self.reader.connections:
            found.setdefault(conn.topic, []).append(conn)
        listing = ", ".join(f"{t} ({c[0].msgtype})" for t, c in sorted(found.items())) or "none"
        wanted: dict[str, tuple[str, ...]] = {t: IMAGE_TYPES for t in self.topics.cameras}
        if self.topics.joint_states_topic:
            wanted[self.topics.joint_states_topic] = (JOINT_STATE_TYPE,)
        conns = []
        for topic, types in wanted.items():
            if topic not in found:
                raise UsageError(f"Bag {self.path} has no topic {topic!r}; its topics are {listing}")
            for conn in found[topic]:
                if conn.msgtype not in types:
                    raise UsageError(
                        f"Bag {self.path}: topic {topic!r} has type {conn.msgtype}, expected one of {list(types)}"
                    )
                conns.append(conn)
        return conns

    def __len__(self) -> int:
        return sum(c.msgcount for c in self._connections if c.topic == self.driving)

    @property
    def duration_s(self) -> float:
        return max(self.reader.duration, 0) / 1e9

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Observation]:
        from ..ros_convert import image_msg_to_rgb, joint_state_to_vector, stamp_to_ns, stamp_to_sec

        topics = self.topics
        acc = self.accounting
        features = list(topics.cameras.values())
        names = {t: f for t, f in topics.cameras.items()}
        if topics.joint_states_topic:
            names[topics.joint_states_topic] = "observation.state"
        label = {f: t for t, f in names.items()}  # assembler key -> topic (accounting is per topic)
        for topic in names:
            acc.input(topic)
        assembler = ObservationAssembler(
            features, needs_state=bool(topics.joint_states_topic), max_age_s=topics.max_age_s
        )
        frame_index = -1
        messages = 0
        stamps_ns: dict[str, int] = {}  # assembler key -> header stamp of its newest message (exact)
        raw_newest: dict[str, tuple[str, Any]] = {}  # topic -> (msgtype, raw CDR) of its newest usable message
        stream = self.reader.messages(connections=self._connections)
        while True:
            try:
                item = next(stream, None)
                if item is None:
                    break
                conn, log_time, raw = item
                msg = self.reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # damaged chunk, truncated file, bad CDR
                self._finish(assembler, label)
                self._account_unread("not read: the bag breaks off before it")
                raise BagReadError(
                    f"Could not read bag {self.path} past message {messages} ({frame_index + 1} frames of "
                    f"{self.driving}): {type(exc).__name__}: {exc}"
                ) from exc
            messages += 1
            topic = conn.topic
            count = acc.input(topic)
            count.received += 1
            driving = topic == self.driving
            if driving:
                frame_index += 1
            try:
                stamp = stamp_to_sec(msg.header.stamp)
                if topic == topics.joint_states_topic:
                    state = joint_state_to_vector(msg, topics.joint_names)
                    if topics.units is not None:
                        state = topics.units.to_policy(state)
                    assembler.add_state(stamp, np.asarray(state, np.float32))
                else:
                    assembler.add_image(names[topic], stamp, image_msg_to_rgb(msg))
                stamps_ns[names[topic]] = stamp_to_ns(msg.header.stamp)
                if self.keep_messages:
                    raw_newest[topic] = (conn.msgtype, raw)
            except (PaiError, ValueError, KeyError) as exc:
                reason = f"bad message: {exc}"
                count.skipped[reason] += 1
                if driving:
                    acc.skip_frame(f"{self.driving}: {reason}")
                continue
            if not driving:
                continue
            missing = assembler.missing()
            if missing:
                reason = "no message yet on " + ", ".join(label[m] for m in missing)
            else:
                obs = assembler.take()
                if obs is not None:
                    count.used += 1
                    obs.frame_index = frame_index
                    obs.episode_index = 0
                    obs.stamp_ns = max(stamps_ns[k] for k in names.values() if k in stamps_ns)
                    obs.extra["log_time_ns"] = int(log_time)
                    if self.keep_messages:
                        order = [t for t in names if t != self.driving] + [self.driving]
                        obs.extra["messages"] = [(t, *raw_newest[t]) for t in order]
                    yield obs
                    continue
                reason = f"inputs further apart than max_input_age_s={topics.max_age_s}"
            count.skipped[reason] += 1
            acc.skip_frame(reason)
        self._finish(assembler, label)
        if getattr(self.reader, "truncated", False):
            self.accounting.notes.append(self.reader.describe())
            return
        lost = self._account_unread("listed in the bag's index but unreadable (damaged data)")
        if lost:
            raise BagReadError(
                f"Bag {self.path} is damaged: messages listed in its index could not be read ({lost}); "
                "the readable frames were processed"
            )

    def _account_unread(self, reason: str) -> dict[str, int]:
        """Messages the index lists but that were never read (a damaged mcap chunk is skipped by rosbags
        without a word; a read error ends the bag early)."""
        listed: dict[str, int] = {}
        for conn in self._connections:
            listed[conn.topic] = listed.get(conn.topic, 0) + conn.msgcount
        lost = {}
        for topic, n in listed.items():
            count = self.accounting.input(topic)
            if n > count.received:
                lost[topic] = n - count.received
                count.skipped[reason] += lost[topic]
                count.received = n
                if topic == self.driving:
                    self.accounting.skip_frame(reason, lost[topic])
        return lost

    def _finish(self, assembler: ObservationAssembler, label: dict[str, str]) -> None:
        """Count the non-driving inputs: replaced before use, left over at the end, or used."""
        acc = self.accounting
        leftover = assembler.unused_at_end()
        for key, topic in label.items():
            if topic == self.driving:
                continue
            count = acc.input(topic)
            superseded = assembler.stats.superseded.get(key, 0)
            if superseded:
                count.skipped[f"replaced by a newer message before the next {self.driving} frame"] = superseded
            if leftover.get(key):
                count.skipped[f"after the last {self.driving} frame"] = leftover[key]
            count.used = count.received - sum(count.skipped.values())


def read_joint_states(bag: str | Path, topic: str, joint_names: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """(N, J) joint positions, ordered by ``joint_names``, of every JointState on ``topic`` of ``bag`` (in the
    robot's units, as recorded), and the malformed messages (reason -> count) that gave none."""
    from ..ros_convert import joint_state_to_vector

    reader = open_reader(bag)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            listing = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})) or "none"
            raise UsageError(f"Bag {bag} has no topic {topic!r}; its topics are {listing}")
        wrong = [c.msgtype for c in conns if c.msgtype != JOINT_STATE_TYPE]
        if wrong:
            raise UsageError(f"Bag {bag}: topic {topic!r} has type {wrong[0]}, expected {JOINT_STATE_TYPE}")
        states: list[np.ndarray] = []
        bad: dict[str, int] = {}
        for conn, _t, raw in reader.messages(connections=conns):
            try:
                states.append(joint_state_to_vector(reader.deserialize(raw, conn.msgtype), joint_names))
            except (PaiError, ValueError) as exc:
                bad[str(exc)] = bad.get(str(exc), 0) + 1
    finally:
        reader.close()
    if not states:
        raise ObservationError(f"Bag {bag}: no usable JointState on {topic} ({sum(bad.values())} malformed: {bad})")
    return np.stack(states), bad
