"""``pai check-inputs``: do a recording's joint states fit what the policy was trained on?

Reads every sensor_msgs/JointState of a rosbag2 recording, converts it with the settings' units (as the live node
does), and compares the states with the policy's own normalisation statistics: joints that look like the wrong
units (radians fed to a degrees policy, a gripper in radians instead of 0..100) are named. Exit code 0 when every
joint fits, 3 when some look wrong.
"""

from __future__ import annotations

import argparse
import json

EXIT_SUSPECT = 3


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check-inputs",
        help="compare a bag's joint states with the policy's statistics (units)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bag", required=True, help="rosbag2 folder or .mcap/.db3 file")
    p.add_argument("--policy-path", required=True, help="LeRobot pretrained_model directory or hub id")
    p.add_argument(
        "--config", help="the node's params YAML (joint_names, joint_states_topic, units); default: pai's defaults"
    )
    p.add_argument("--joint-states-topic", help="override the settings' joint_states_topic")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def read_states(bag: str, topic: str, units, joint_names: list[str]):
    """(N, J) states in the policy's units from every JointState on ``topic``, and the malformed messages."""
    import numpy as np

    from ..errors import InputError, PaiError
    from ..ros_convert import joint_state_to_vector
    from ..sources.bag import JOINT_STATE_TYPE, open_reader

    reader = open_reader(bag)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            listing = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})) or "none"
            raise InputError(f"Bag {bag} has no topic {topic!r}; its topics are {listing}")
        wrong = [c.msgtype for c in conns if c.msgtype != JOINT_STATE_TYPE]
        if wrong:
            raise InputError(f"Bag {bag}: topic {topic!r} has type {wrong[0]}, expected {JOINT_STATE_TYPE}")
        states, bad = [], {}
        for conn, _t, raw in reader.messages(connections=conns):
            try:
                states.append(joint_state_to_vector(reader.deserialize(raw, conn.msgtype), joint_names))
            except (PaiError, ValueError) as exc:
                bad[str(exc)] = bad.get(str(exc), 0) + 1
    finally:
        reader.close()
    if not states:
        raise InputError(f"Bag {bag}: no usable JointState on {topic} ({sum(bad.values())} malformed: {bad})")
    return units.to_policy(np.stack(states)), bad


def run(args) -> int:
    from ..errors import ConfigError, UsageError
    from ..policy import load_policy
    from ..settings import PaiSettings, load_settings
    from ..units import JointUnits, check_states, state_stats, suspects

    settings = load_settings(args.config) if args.config else PaiSettings()
    topic = args.joint_states_topic or settings.joint_states_topic
    units = JointUnits.from_settings(settings)
    loaded = load_policy(args.policy_path)
    stats = state_stats(loaded.preprocessor)
    if stats is None:
        raise UsageError(
            f"policy {args.policy_path} has no normalisation statistics for observation.state: "
            "nothing to compare the joint states with"
        )
    states, bad = read_states(args.bag, topic, units, settings.joint_names)
    size = next(iter(stats.values())).size
    if states.shape[1] != size:
        raise ConfigError(
            f"joint_names {settings.joint_names} give {states.shape[1]} values but the policy's "
            f"observation.state has {size}"
        )
    checks = check_states(states, settings.joint_names, stats)
    wrong = suspects(checks)
    result = {
        "bag": str(args.bag),
        "topic": topic,
        "states": int(states.shape[0]),
        "malformed": bad,
        "conversions": units.describe(),
        "suspect_joints": wrong,
        "joints": {
            c.joint: {
                "ok": c.ok,
                "reason": c.reason,
                "median": c.median,
                "policy_mean": c.mean,
                "policy_std": c.std,
                "z": c.z,
                "spread_ratio": c.spread_ratio,
            }
            for c in checks
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{states.shape[0]} joint states from {topic} in {args.bag}"
            + (f" ({sum(bad.values())} malformed)" if bad else "")
        )
        print(
            f"{'joint':>16} {'conversion':>24} {'median':>10} {'mean':>10} {'std':>10} {'z':>7} {'spread':>8}  verdict"
        )
        for c in checks:
            spread = "" if c.spread_ratio is None else f"{c.spread_ratio:.3g}"
            conv = units.conversions[settings.joint_names.index(c.joint)]
            print(
                f"{c.joint:>16} {conv:>24} {c.median:>10.4g} {c.mean:>10.4g} {c.std:>10.4g} {c.z:>7.2f} {spread:>8}  "
                + ("ok" if c.ok else "WRONG UNITS? " + c.reason)
            )
        print(
            "joints that look like the wrong units: " + ", ".join(wrong)
            if wrong
            else "every joint fits the policy's statistics"
        )
    return EXIT_SUSPECT if wrong else 0
