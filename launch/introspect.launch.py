"""ros2 launch pai introspect.launch.py [config:=<yaml>] [policy_path:=...] [device:=cuda] [namespace:=robot1]

Starts the pai introspection node with a ROS 2 parameters file (default: share/pai/config/introspect.yaml).
policy_path and device, when given, override the file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    overrides = {}
    for name in ("policy_path", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    return [
        Node(
            package="pai",
            executable="introspect",
            name="pai_introspector",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("config"), overrides],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("pai"), "config", "introspect.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config, description="ROS 2 parameters file"),
        DeclareLaunchArgument("policy_path", default_value="", description="overrides policy_path of the file"),
        DeclareLaunchArgument("device", default_value="", description="overrides device (cpu, cuda, cuda:1)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        OpaqueFunction(function=_node),
    ])
