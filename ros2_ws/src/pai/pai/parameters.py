"""ROS parameters of the node: exactly ``pai_core.settings.flatten(PaiSettings())``, validated by ``from_flat``.

Declared with dynamic typing so a YAML ``rate_hz: 10`` (an integer) reaches ``from_flat``, which converts
it or rejects a wrong type with a message naming the setting. A params-file key that is no setting is an error
(as ``pai replay --config`` makes it), not a parameter rclpy quietly ignores.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pai_core.settings import SECTIONS, PaiSettings, check_known, flatten, from_flat

#: settings that can change while the node runs (everything else needs a restart).
RUNTIME = ("threshold", "publish_actions", "fail_safe", "stale_timeout_s", "startup_grace_s", "max_input_age_s")
RUNTIME_PREFIXES = ("alarm.", "overlay.")


def is_runtime(name: str) -> bool:
    return name in RUNTIME or name.startswith(RUNTIME_PREFIXES)


def _arg_docs(cls: type) -> dict[str, str]:
    """Field docs from the ``Args:`` block of a dataclass docstring ("name: text")."""
    docs: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        m = re.match(r"\s*(\w+): (.*)", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def descriptions() -> dict[str, str]:
    out = {k: v for k, v in _arg_docs(PaiSettings).items()}
    for prefix, cls in SECTIONS.items():
        out.update({f"{prefix}.{k}": v for k, v in _arg_docs(cls).items()})
    out["cameras.topics"] = "camera topics (sensor_msgs/Image, or CompressedImage when the name ends in /compressed)"
    out["cameras.features"] = "policy image feature fed by each camera topic, pairwise"
    return out


def overrides(node: Any) -> list[str]:
    """Names the params file and the command line set for this node (rclpy keeps them, declared or not)."""
    return list(getattr(node, "_parameter_overrides", {}))


def declare(node: Any) -> PaiSettings:
    """Refuse unknown keys, declare every setting as a parameter (defaults from ``PaiSettings()``) and return the
    validated values."""
    from rcl_interfaces.msg import ParameterDescriptor

    check_known(overrides(node), where="parameters file: ")
    docs = descriptions()
    for name, default in flatten(PaiSettings()).items():
        extra = "" if is_runtime(name) else " (read at start)"
        # an empty list has no ROS type: declare it unset (from_flat reads None as [])
        value = None if default == [] else default
        node.declare_parameter(
            name,
            value,
            ParameterDescriptor(
                description=docs.get(name, "") + extra, dynamic_typing=True, read_only=not is_runtime(name)
            ),
        )
    return current(node)


def current(node: Any, changes: dict[str, Any] | None = None) -> PaiSettings:
    """Settings from the node's parameter values, with ``changes`` applied on top (raises SettingsError)."""
    values = {name: node.get_parameter(name).value for name in flatten(PaiSettings())}
    values.update(changes or {})
    return from_flat(values)
