"""``pai check-inputs``: do a recording's joint states fit what the policy was trained on?

Reads every sensor_msgs/JointState of a rosbag2 recording, converts it with the settings' units (as the live node
does), and compares the states with the policy's own normalisation statistics: joints that look like the wrong
units (radians fed to a degrees policy, a gripper in radians instead of 0..100) are named. Exit code 0 when every
joint fits, 3 when some look wrong.
"""

from __future__ import annotations

import argparse
import json

from . import args as flags

EXIT_SUSPECT = 3


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check-inputs",
        help="compare a bag's joint states with the policy's statistics (units)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bag", required=True, help="rosbag2 folder or .mcap/.db3 file")
    flags.add_policy_path(p)
    p.add_argument(
        "--config", help="the node's params YAML (joint_names, joint_states_topic, units); default: pai's defaults"
    )
    p.add_argument("--joint-states-topic", help="override the settings' joint_states_topic")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, UsageError
    from ..policy import load_policy
    from ..settings import PaiSettings, load_settings
    from ..sources.bag import read_joint_states
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
    states, bad = read_joint_states(args.bag, topic, settings.joint_names)
    states = units.to_policy(states)
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
