"""pai_core is a pure library: importing any of its modules never pulls in rclpy."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
import pai_core
names = [m.name for m in pkgutil.walk_packages(pai_core.__path__, "pai_core.")]
for name in names:
    importlib.import_module(name)
print(len(names), "rclpy" in sys.modules)
"""


def test_importing_every_pai_core_module_does_not_import_rclpy():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[-2]) > 40 and out[-1] == "False", out


LIGHT = """
import sys
import pai_core.cli, pai_core.configs, pai_core.settings, pai_core.topics, pai_core.layout, pai_core.units
pai_core.cli.build_parser().format_help()
pai_core.configs.IntrospectionConfig(), pai_core.configs.OverlayConfig(), pai_core.configs.SaliencyConfig()
pai_core.settings.PaiSettings()
print(*[name for name in ("torch", "cv2", "lerobot", "pai_core.sae", "pai_core.engine") if name in sys.modules])
"""


def test_building_the_cli_parser_and_the_configs_imports_neither_torch_nor_opencv():
    out = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, check=True).stdout
    assert out.split() == [], out


def test_pai_core_names_load_on_first_use_and_unknown_names_are_attribute_errors():
    import pai_core
    from pai_core.engine import Introspector
    from pai_core.overlay import OverlayConfig

    assert pai_core.Introspector is Introspector and pai_core.OverlayConfig is OverlayConfig
    assert set(pai_core.__all__) <= set(dir(pai_core))
    for name in pai_core.__all__:
        assert getattr(pai_core, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pai_core.nope
