"""The demo is isolated: no library module imports pai_core.sim, and it finds its files as an installed
package would (the shipped policy through importlib.resources and package-data, the ROS package through an
explicit lookup that names what it searched, the settings and node parameters without config/ files)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
import tomllib
import yaml

import pai_core
from pai_core.errors import RosUnavailable

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(pai_core.__file__).parent
#: the CLI entry points of the demo; everything else in pai_core is the library
ENTRY_POINTS = {PACKAGE / "commands" / "sim.py", PACKAGE / "commands" / "demo.py"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the pai_core modules ``path`` imports (relative imports resolved)."""
    package = ["pai_core", *path.relative_to(PACKAGE).parent.parts]  # what a relative import starts from
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_no_library_module_imports_the_demo():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "sim" not in path.relative_to(PACKAGE).parts[:1] and path not in ENTRY_POINTS
        if any(name == "pai_core.sim" or name.startswith("pai_core.sim.") for name in _imports(path))
    ]
    assert offenders == []
    assert "pai_core.sim.demo" in _imports(PACKAGE / "commands" / "demo.py")  # the check sees real imports


def test_the_shipped_policy_is_package_data_found_through_importlib_resources():
    from pai_core.sim.demo import SHIPPED_POLICY

    assert SHIPPED_POLICY.resolve().is_relative_to(PACKAGE.resolve())
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "pai_core.sim"
    ]
    files = [p.relative_to(SHIPPED_POLICY.parent).as_posix() for p in SHIPPED_POLICY.rglob("*") if p.is_file()]
    assert "demo_policy/pretrained_model/model.safetensors" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []


def test_the_ros_package_comes_from_the_argument_then_the_environment_then_the_checkout(tmp_path, monkeypatch):
    from pai_core.sim.ros_replay import ROS_PACKAGE_ENV, find_ros_package, rclpy_available

    monkeypatch.delenv(ROS_PACKAGE_ENV, raising=False)
    assert find_ros_package() == ROOT / "ros2_ws" / "src" / "pai"
    with pytest.raises(RosUnavailable, match=rf"the argument gives {tmp_path}, which has no pai/introspect_node.py"):
        find_ros_package(tmp_path)
    monkeypatch.setenv(ROS_PACKAGE_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(RosUnavailable, match=rf"\${ROS_PACKAGE_ENV} gives {tmp_path / 'elsewhere'}"):
        find_ros_package()
    assert "ROS package sources are missing" in (rclpy_available() or "")
    assert find_ros_package(ROOT / "ros2_ws" / "src" / "pai") == ROOT / "ros2_ws" / "src" / "pai"


def test_the_node_parameters_and_the_demo_settings_need_no_config_file(tmp_path):
    """Built from pai's defaults, they hold what config/introspect.yaml holds."""
    import dataclasses

    from pai_core.settings import flatten, load_settings
    from pai_core.sim.demo import demo_settings
    from pai_core.sim.ros_replay import write_node_params

    shipped = yaml.safe_load((ROOT / "config" / "introspect.yaml").read_text())["/**"]["ros__parameters"]
    written = write_node_params(tmp_path / "params.yaml", "p", "s")
    assert yaml.safe_load(written.read_text())["/**"]["ros__parameters"] == shipped | {
        "policy_path": "p",
        "sae_path": "s",
    }
    expected = dataclasses.replace(load_settings(ROOT / "config" / "introspect.yaml"), policy_path="p", sae_path="s")
    assert flatten(demo_settings(Path("p"), Path("s"))) == flatten(expected)
