"""ament_python package ``pai``: the introspection node; launch and config come from the repository's
top-level ``launch/`` and ``config/`` (symlinked here) and are installed into ``share/pai``."""

from glob import glob

from setuptools import find_packages, setup

package_name = "pai"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.json")
         + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pai maintainers",
    maintainer_email="pai@example.com",
    description="Live introspection of LeRobot ACT policies (attention overlays, SAE features, OOD alarm)",
    license="Apache-2.0",
    entry_points={"console_scripts": ["introspect = pai.introspect_node:main", "bag_replay = pai.bag_replay:main"]},
)
