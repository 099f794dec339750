"""ament_python package ``pai``: the introspection node.

Launch and config files have one home, the repository's top-level ``launch/`` and ``config/``; they are installed
from there into ``share/pai``. Building the package outside the repository fails here, naming what is missing,
instead of installing a package without its launch file.
"""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "pai"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))


def repo_files(folder: str, patterns: list) -> list:
    """The repository's files, relative to this package (colcon wants relative data_files)."""
    found = sorted(os.path.relpath(f, HERE) for p in patterns for f in glob(os.path.join(REPO, folder, p)))
    if not found:
        raise SystemExit(
            f"pai: no {' or '.join(patterns)} in {os.path.join(REPO, folder)}; the package installs its "
            "launch and config files from the pai repository, so build ros2_ws inside it"
        )
    return found


launch_files = repo_files("launch", ["*.launch.py"])
config_files = repo_files("config", ["*.yaml", "*.xml", "*.json", "*.rviz"])
for required in ("introspect.launch.py", "introspect.yaml"):
    if not any(os.path.basename(f) == required for f in launch_files + config_files):
        raise SystemExit(f"pai: {required} is missing from {REPO}/launch or {REPO}/config")

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", launch_files),
        ("share/" + package_name + "/config", config_files),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pai maintainers",
    maintainer_email="pai@example.com",
    description="Live introspection of LeRobot ACT policies (attention overlays, SAE features, OOD alarm)",
    license="Apache-2.0",
    entry_points={"console_scripts": ["introspect = pai.introspect_node:main", "bag_replay = pai.bag_replay:main"]},
)
