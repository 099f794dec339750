"""``bag_replay``: play a rosbag2 recording into the running introspection node and record its answers.

What ``ros2 bag play`` would do, plus the bookkeeping a comparison needs: the camera and JointState
messages are published with their recorded header stamps on the node's input topics (sensor-data QoS,
as the node subscribes), paced by the recorded timing (``--rate``), and in lock-step with the node: the
next frame goes out only after the node answered the previous one, so a slow engine drops nothing.
Frames are grouped by offline replay's own ``pai_core.sources.bag.BagSource`` (one observation per message of
the first camera, with the newest message of every other input; ``keep_messages`` hands over the recorded
messages), so the node sees the observations offline ``pai replay --bag`` sees and their scores can be compared.
The node's outputs are subscribed with the node's own QoS table and message classes (``pai_core.ros_qos``).

The node creates its output publishers when it publishes its first frame, and messages sent before a
subscriber has matched are lost; two warm-up frames (the first frame, stamped 2 s and 1 s earlier) let
discovery finish, then ``~/reset_alarm`` clears the alarm window, so the recorded frames start clean.

Writes ``node_outputs.parquet`` (one row per bag frame), ``summary.json`` and a plot
(``node_vs_offline.png`` when ``--offline-dir`` holds the offline replay's ``ood.parquet``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

from pai_core import topics
from pai_core.commands import args as flags
from pai_core.errors import InputError, PaiError
from pai_core.ros_convert import stamp_to_ns
from pai_core.ros_qos import message_class, output_qos
from pai_core.settings import PaiSettings, load_settings
from pai_core.sources.bag import BagReadError, BagSource, BagTopics, open_reader

WARMUP_OFFSETS_NS = (2_000_000_000, 1_000_000_000)


@dataclass
class Group:
    """The messages that make one observation: other inputs first, the driving camera last."""

    index: int  # frame index of the driving camera in the bag
    stamp_ns: int  # newest header stamp: the stamp the node's outputs carry
    log_ns: int  # recording time of the driving camera message (pacing)
    messages: list[tuple[str, Any]]


@dataclass
class ReplayArgs:
    bag: Path
    params_file: Path
    output: Path
    offline_dir: Path | None = None
    rate: float = 1.0
    node: str = f"/{topics.NODE_NAME}"
    start_timeout_s: float = 120.0
    frame_timeout_s: float = 60.0
    progress: bool = True


# ------------------------------------------------------------------------------------------- the bag
def bag_topics(settings: PaiSettings, bag: Path) -> BagTopics:
    """The node's inputs as ``BagSource`` topics: every camera the node subscribes to, and the joint states when
    the policy takes a state (its config.json says so; for a hub id: when the bag has the topic). No units: the
    messages go out as recorded and the node converts them, as it does for the robot's."""
    needs_state = _policy_needs_state(settings.policy_path)
    if needs_state is None:
        reader = open_reader(bag)
        try:
            needs_state = any(c.topic == settings.joint_states_topic for c in reader.connections)
        finally:
            reader.close()
    return BagTopics(
        dict(settings.camera_map),
        settings.joint_states_topic if needs_state else "",
        list(settings.joint_names),
        settings.max_input_age_s,
        units=None,
    )


def _policy_needs_state(policy_path: str) -> bool | None:
    """Whether a local policy folder's config.json declares observation.state; None when it cannot be read."""
    config = Path(policy_path).expanduser() / "config.json"
    try:
        features = json.loads(config.read_text()).get("input_features", {})
    except (OSError, ValueError, AttributeError):
        return None
    return "observation.state" in features if isinstance(features, dict) else None


def frame_groups(source: BagSource, error: list[str]) -> Iterator[Group]:
    """One group per observation ``BagSource`` forms (exactly as offline ``pai replay --bag`` forms them), its
    recorded messages deserialized for rclpy; frames it cannot form are counted in ``source.accounting``. A bag that
    breaks off ends the groups and leaves its error in ``error``."""
    if not getattr(source.reader, "is2", True):  # a salvaged MCAP is CDR
        raise InputError("bag_replay plays rosbag2 recordings (CDR); convert ROS 1 bags with `rosbags-convert`")
    try:
        for obs in source:
            messages = []
            for topic, msgtype, raw in obs.extra["messages"]:
                try:
                    messages.append((topic, deserialize_message(bytes(raw), message_class(msgtype))))
                except Exception as exc:  # CDR rosbags reads but rclpy does not: the node could not take it
                    source.accounting.skip_frame(f"{source.driving}: not publishable with rclpy: {exc}")
                    break
            else:
                yield Group(obs.frame_index, int(obs.stamp_ns), int(obs.extra["log_time_ns"]), messages)
    except BagReadError as exc:
        error.append(str(exc))


# --------------------------------------------------------------------------------------- the outputs
class Outputs:
    """Subscribes to the node's outputs and keeps every message with its arrival time."""

    def __init__(self, node: Node, ns: str, first_camera: str):
        self.cond = threading.Condition()
        self.got: dict[str, list[tuple[float, Any]]] = collections.defaultdict(list)
        self.overlay = f"overlay/{topics.camera_short(first_camera)}/compressed"
        self.subs = {}
        outputs = {
            "ood_score": "std_msgs/msg/Float32",
            "ood_threshold": "std_msgs/msg/Float32",
            "attention_share": "std_msgs/msg/Float32MultiArray",
            "features": "std_msgs/msg/Float32MultiArray",
            self.overlay: "sensor_msgs/msg/CompressedImage",
            "alarm": "std_msgs/msg/Bool",
            "feature_names": "std_msgs/msg/String",
        }
        for name, msgtype in outputs.items():  # types and QoS (latched or streamed) from the node's own table
            topic = f"{ns}/{name}"
            self.subs[name] = node.create_subscription(
                message_class(msgtype), topic, lambda m, n=name: self._add(n, m), output_qos(topic, ns)
            )

    def _add(self, name: str, msg: Any) -> None:
        with self.cond:
            self.got[name].append((time.monotonic(), msg))
            self.cond.notify_all()

    def counts(self) -> dict[str, int]:
        with self.cond:
            return {k: len(v) for k, v in self.got.items()}

    def wait(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout)

    def clear(self, keep: tuple[str, ...] = ("feature_names",)) -> None:
        with self.cond:
            for k in list(self.got):
                if k not in keep:
                    self.got[k] = []


class BagReplay:
    """Publishes groups in lock-step with the node and collects one answer per group."""

    def __init__(self, args: ReplayArgs, settings: PaiSettings):
        self.args, self.settings = args, settings
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("pai_bag_replay", context=self.context)
        self.pubs = {}
        for topic in settings.camera_map:
            cls = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.pubs[topic] = self.node.create_publisher(cls, topic, qos_profile_sensor_data)
        self.pubs[settings.joint_states_topic] = self.node.create_publisher(
            JointState, settings.joint_states_topic, qos_profile_sensor_data
        )
        self.out = Outputs(self.node, args.node.rstrip("/"), next(iter(settings.camera_map.values())))
        self.reset_client = self.node.create_client(Trigger, f"{args.node.rstrip('/')}/reset_alarm")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.required: list[str] = []

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # ---------------------------------------------------------------------------------------- steps
    def wait_for_node(self, topics_used: list[str]) -> int:
        """Block until the node is up (latched feature names) and subscribed; returns its feature count."""
        a = self.args
        if not self.out.wait(lambda: self.out.got["feature_names"], a.start_timeout_s):
            raise PaiError(
                f"no node answered on {a.node}/feature_names within {a.start_timeout_s:.0f} s; "
                "is pai_introspector running with the same ROS_DOMAIN_ID and DDS profile?"
            )
        cameras = [t for t in topics_used if t in self.settings.camera_map]
        end = time.monotonic() + a.start_timeout_s
        while any(self.pubs[t].get_subscription_count() == 0 for t in cameras):
            if time.monotonic() > end:
                raise PaiError(
                    f"the node does not subscribe to the camera topics {cameras}; check cameras.topics "
                    "in the params file"
                )
            time.sleep(0.02)
        joints = self.settings.joint_states_topic
        end = time.monotonic() + 5.0  # a policy without state input does not subscribe to joints
        while joints in topics_used and self.pubs[joints].get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.02)
        n_features = len(json.loads(self.out.got["feature_names"][-1][1].data))
        self.required = ["attention_share", self.out.overlay]
        if n_features:
            self.required += ["features", "ood_score", "ood_threshold"]
        return n_features

    def publish(self, group: Group, stamp_ns: int | None = None) -> None:
        """Publish the group (driving camera last); ``stamp_ns`` restamps every message (warm-up)."""
        for topic, msg in group.messages:
            if stamp_ns is None:
                self.pubs[topic].publish(msg)
                continue
            saved = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            self.pubs[topic].publish(msg)  # serialized here, so the stamp can be restored at once
            msg.header.stamp.sec, msg.header.stamp.nanosec = saved

    def answer(self, stamp_ns: int, before: dict[str, int], timeout: float) -> dict | None:
        """Wait for the node's outputs of the frame stamped ``stamp_ns``; None on timeout."""
        got = self.out.got

        def done() -> bool:
            overlays = got[self.out.overlay][before.get(self.out.overlay, 0) :]
            return any(stamp_to_ns(m.header.stamp) == stamp_ns for _, m in overlays) and all(
                len(got[k]) > before.get(k, 0) for k in self.required
            )

        if not self.out.wait(done, timeout):
            return None
        # the alarm follows the score in the node's publishing order
        self.out.wait(lambda: len(got["alarm"]) > before.get("alarm", 0), min(timeout, 2.0))
        with self.out.cond:
            arrived = max(got[k][before.get(k, 0)][0] for k in self.required)
            row: dict[str, Any] = {"answered": True, "received_at": arrived}
            if "ood_score" in self.required:
                row["score"] = float(got["ood_score"][before.get("ood_score", 0)][1].data)
                row["threshold"] = float(got["ood_threshold"][before.get("ood_threshold", 0)][1].data)
                feats = got["features"][before.get("features", 0)][1].data
                row["n_active_features"] = int(sum(1 for v in feats if v != 0.0))
            row["alarm"] = bool(got["alarm"][-1][1].data) if got["alarm"] else False
            share = got["attention_share"][before.get("attention_share", 0)][1]
            labels = share.layout.dim[0].label.split(",") if share.layout.dim else []
            for label, value in zip(labels, share.data):
                row[f"share_{label}"] = float(value)
        return row

    def warm_up(self, first: Group) -> None:
        """Two restamped copies of the first frame: the node creates its output publishers on its first
        frame and discovery must match them before anything is recorded; then reset the alarm window."""
        a = self.args
        self.publish(first, first.stamp_ns - WARMUP_OFFSETS_NS[0])
        end = time.monotonic() + a.start_timeout_s
        while any(self.out.subs[k].get_publisher_count() == 0 for k in self.required):
            if time.monotonic() > end:
                raise PaiError(f"the node published no outputs for the warm-up frame within {a.start_timeout_s:.0f} s")
            time.sleep(0.02)
        stamp = first.stamp_ns - WARMUP_OFFSETS_NS[1]
        before = self.out.counts()
        self.publish(first, stamp)
        if self.answer(stamp, before, a.frame_timeout_s) is None:
            raise PaiError(f"the node did not answer the warm-up frame within {a.frame_timeout_s:.0f} s")
        if not self.reset_client.wait_for_service(timeout_sec=10.0):
            raise PaiError(f"service {a.node}/reset_alarm is not available")
        n_alarm = len(self.out.got["alarm"])
        future = self.reset_client.call_async(Trigger.Request())
        end = time.monotonic() + 10.0
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        if not future.done() or not self.out.wait(
            lambda: len(self.out.got["alarm"]) > n_alarm and self.out.got["alarm"][-1][1].data is False, 10.0
        ):
            raise PaiError(f"{a.node}/reset_alarm did not clear the alarm after the warm-up")
        time.sleep(0.2)  # let late warm-up messages land before clearing
        self.out.clear()

    def play(self, groups: Iterator[Group], total: int) -> tuple[list[dict], int]:
        from tqdm import tqdm

        a = self.args
        rows: list[dict] = []
        start = log0 = None
        for group in tqdm(groups, total=total, desc="bag_replay", unit="frame", disable=not a.progress):
            if start is None:
                start, log0 = time.monotonic(), group.log_ns
            elif a.rate > 0:
                time.sleep(max(0.0, start + (group.log_ns - log0) / 1e9 / a.rate - time.monotonic()))
            before = self.out.counts()
            sent = time.monotonic()
            self.publish(group)
            row = self.answer(group.stamp_ns, before, a.frame_timeout_s) or {"answered": False}
            if row["answered"]:
                row["latency_ms"] = (row.pop("received_at") - sent) * 1000.0
            rows.append({"frame": group.index, "stamp_ns": group.stamp_ns, "stamp": group.stamp_ns / 1e9, **row})
        time.sleep(0.5)  # anything arriving now would be an extra answer
        counts = self.out.counts()
        key = "ood_score" if "ood_score" in self.required else "attention_share"
        return rows, counts.get(key, 0)


# ------------------------------------------------------------------------------------------ results
def compare_offline(rows: list[dict], offline_dir: Path) -> dict:
    """Match node rows to the offline replay's ood.parquet by stamp (microseconds)."""
    import pyarrow.parquet as pq

    path = offline_dir / "ood.parquet"
    if not path.is_file():
        raise InputError(
            f"--offline-dir {offline_dir} has no ood.parquet (run `pai replay --bag ... --output-dir` "
            "with an SAE first)"
        )
    t = pq.read_table(path).to_pydict()
    offline = {int(round(ts * 1e6)): (s, bool(al)) for ts, s, al in zip(t["timestamp"], t["score"], t["alarm"])}
    diffs, alarm_mismatch, matched = [], 0, []
    for row in rows:
        key = int(round(row["stamp"] * 1e6))
        if row.get("score") is None or key not in offline:
            continue
        score, alarm = offline[key]
        row["offline_score"], row["offline_alarm"] = float(score), alarm
        diffs.append(abs(row["score"] - score))
        alarm_mismatch += int(row["alarm"] != alarm)
        matched.append(key)
    return {
        "offline_frames": len(offline),
        "matched_frames": len(matched),
        "offline_only_frames": len(set(offline) - set(matched)),
        "max_abs_score_diff": max(diffs) if diffs else None,
        "alarm_mismatches": alarm_mismatch,
    }


def plot(rows: list[dict], path: Path, with_offline: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("score") is not None]
    t0 = rows[0]["stamp"] if rows else 0.0
    fig, axes = plt.subplots(
        2 if with_offline else 1, 1, figsize=(8, 5 if with_offline else 3.2), dpi=110, sharex=True, squeeze=False
    )
    ax = axes[0, 0]
    x = [r["stamp"] - t0 for r in done]
    if with_offline:
        off = [r for r in done if "offline_score" in r]
        ax.plot(
            [r["stamp"] - t0 for r in off],
            [r["offline_score"] for r in off],
            color="#4c72b0",
            lw=2.5,
            alpha=0.6,
            label="offline pai replay",
        )
    ax.plot(x, [r["score"] for r in done], "o", ms=3, color="#dd8452", label="ROS node (bag_replay)")
    if done:
        ax.axhline(done[0]["threshold"], color="#c44e52", ls="--", lw=1.2, label="threshold")
    half = float(np.median(np.diff(x))) / 2 if len(x) > 1 else 0.05
    for r in done:
        if r["alarm"]:
            ax.axvspan(r["stamp"] - t0 - half, r["stamp"] - t0 + half, color="#c44e52", alpha=0.12, lw=0)
    ax.set_ylabel("OOD score")
    ax.set_title("node OOD score per frame (shaded: node alarm)")
    ax.legend(fontsize=8)
    if with_offline:
        ax2 = axes[1, 0]
        off = [r for r in done if "offline_score" in r]
        ax2.plot(
            [r["stamp"] - t0 for r in off], [abs(r["score"] - r["offline_score"]) for r in off], ".-", color="#55a868"
        )
        ax2.set_ylabel("|node - offline|")
    axes[-1, 0].set_xlabel("seconds since the first frame")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(
    args: ReplayArgs,
    rows: list[dict],
    received: int,
    skipped: collections.Counter,
    n_features: int,
    seconds: float,
    bag_frames: int,
    bag_error: str = "",
) -> dict:
    import pandas as pd

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare_offline(rows, args.offline_dir) if args.offline_dir and n_features else None
    columns = [
        "frame",
        "stamp_ns",
        "stamp",
        "score",
        "threshold",
        "alarm",
        "answered",
        "latency_ms",
        "n_active_features",
    ]
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in columns if c in frame] + sorted(c for c in frame if c not in columns)]
    frame.to_parquet(out / "node_outputs.parquet", index=False)
    answered = [r for r in rows if r["answered"]]
    alarms = [r["frame"] for r in answered if r.get("alarm")]
    latencies = sorted(r["latency_ms"] for r in answered)
    figure = out / ("node_vs_offline.png" if comparison else "node_timeline.png")
    if n_features and rows:
        plot(rows, figure, comparison is not None)
    summary = {
        "bag": str(args.bag),
        "node": args.node,
        "rate": args.rate,
        "seconds": round(seconds, 2),
        "bag_error": bag_error,
        "bag_frames": bag_frames,
        "frames_published": len(rows),
        "frames_skipped": dict(skipped),
        "warmup_frames": len(WARMUP_OFFSETS_NS),
        "outputs_received": received,
        "frames_answered": len(answered),
        "frames_unanswered": len(rows) - len(answered),
        "extra_outputs": received - len(answered),
        "n_features": n_features,
        "alarm_frames": len(alarms),
        "first_alarm_frame": alarms[0] if alarms else None,
        "latency_ms_median": latencies[len(latencies) // 2] if latencies else None,
        "offline": comparison,
        "max_abs_score_diff_vs_offline": comparison["max_abs_score_diff"] if comparison else None,
        "outputs": {"table": str(out / "node_outputs.parquet"), "plot": str(figure) if figure.exists() else None},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def replay(args: ReplayArgs) -> dict:
    settings = load_settings(args.params_file)
    topics_ = bag_topics(settings, args.bag)
    error: list[str] = []
    with BagSource(args.bag, topics_, keep_messages=True) as source:
        bag_frames = len(source)
        skipped = source.accounting.frames_skipped
        groups = frame_groups(source, error)
        first = next(groups, None)
        if first is None:
            raise InputError(
                f"Bag {args.bag} has no complete frame to play (skipped: {dict(skipped)}"
                + (f"; {error[0]}" if error else "")
                + ")"
            )
        used = list(topics_.cameras) + ([topics_.joint_states_topic] if topics_.joint_states_topic else [])
        session = BagReplay(args, settings)
        try:
            n_features = session.wait_for_node(used)
            session.warm_up(first)
            start = time.monotonic()
            rows, received = session.play(_chain(first, groups), bag_frames - sum(skipped.values()))
            seconds = time.monotonic() - start
        finally:
            session.close()
    return write_results(
        args, rows, received, collections.Counter(skipped), n_features, seconds, bag_frames, error[0] if error else ""
    )


def _chain(first: Group, rest: Iterator[Group]) -> Iterator[Group]:
    yield first
    yield from rest


def parse_args(argv: list[str] | None = None) -> ReplayArgs:
    p = argparse.ArgumentParser(
        prog="bag_replay", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bag", required=True, help="rosbag2 folder (metadata.yaml) or .mcap / .db3 file")
    p.add_argument("--params-file", required=True, help="the node's params YAML (input topics, joint names)")
    flags.add_output_dir(p, "folder for node_outputs.parquet, summary.json and the plot", old=["--output"])
    p.add_argument("--offline-dir", help="offline `pai replay` output folder (its ood.parquet) to compare with")
    p.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="playback speed factor of the recorded timing (0 = as fast as the node answers)",
    )
    p.add_argument("--node", default=f"/{topics.NODE_NAME}", help="the node's namespace for its outputs")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the node to come up")
    p.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for one frame's outputs")
    p.add_argument("--no-progress", action="store_true")
    a, _ros = p.parse_known_args(argv)
    if a.rate < 0:
        p.error(f"--rate {a.rate} must be >= 0")
    return ReplayArgs(
        Path(a.bag),
        Path(a.params_file),
        Path(a.output_dir),
        Path(a.offline_dir) if a.offline_dir else None,
        a.rate,
        a.node,
        a.start_timeout,
        a.frame_timeout,
        not a.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = replay(args)
    except (PaiError, KeyboardInterrupt) as exc:
        print(f"[bag_replay] error: {exc}", file=sys.stderr)
        return 2
    if summary["bag_error"]:
        print(
            f"[bag_replay] error: {summary['bag_error']} ({summary['frames_published']} frames played; "
            f"{args.output / 'summary.json'})",
            file=sys.stderr,
        )
        return 2
    diff = summary["max_abs_score_diff_vs_offline"]
    print(
        f"[bag_replay] {summary['frames_answered']} of {summary['frames_published']} frames answered "
        f"({summary['frames_skipped'] or 'none skipped'}), {summary['alarm_frames']} alarm frames"
        + (f", max |score - offline| {diff:.2e}" if diff is not None else "")
        + f"; {args.output / 'summary.json'}"
    )
    return 0 if summary["frames_unanswered"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
