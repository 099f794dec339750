"""pai_core is a pure library: importing any of its modules never pulls in rclpy."""

from __future__ import annotations

import subprocess
import sys

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
