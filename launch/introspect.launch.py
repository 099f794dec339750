"""ros2 launch pai introspect.launch.py [config:=<yaml>] [policy_path:=...] [sae_path:=...] [device:=cuda]
[model_dtype:=bfloat16] [namespace:=robot1]

Starts the pai introspection node with a ROS 2 parameters file (default: share/pai/config/introspect.yaml);
policy_path, sae_path, device and model_dtype, when given, override the file (policy_overrides, a list, is set
in the file). A config that does not exist is an error, and
the launch ends with the node: when it fails (bad parameters, no GPU, a crash), ros2 launch exits non-zero.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from pai.launch_checks import LaunchError, check_config, exit_error, overrides

OVERRIDES = ("policy_path", "sae_path", "device", "model_dtype")


def _on_exit(event, context):
    """The node is the launch: end with it, and fail when it failed (an exception raised in an event handler makes
    ros2 launch log it and exit 1)."""
    error = exit_error("pai_introspector", event.returncode, shutting_down=context.is_shutdown)
    if error:
        raise LaunchError(error)
    return [EmitEvent(event=Shutdown(reason="pai_introspector exited"))]


def _node(context):
    config = check_config(LaunchConfiguration("config").perform(context))
    node = Node(
        package="pai",
        executable="introspect",
        name="pai_introspector",
        namespace=LaunchConfiguration("namespace"),
        parameters=[config, overrides({n: LaunchConfiguration(n).perform(context) for n in OVERRIDES})],
        output="screen",
        emulate_tty=True,
    )
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_exit))]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("pai"), "config", "introspect.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("config", default_value=default_config, description="ROS 2 parameters file"),
            DeclareLaunchArgument("policy_path", default_value="", description="overrides policy_path of the file"),
            DeclareLaunchArgument("sae_path", default_value="", description="overrides sae_path of the file"),
            DeclareLaunchArgument("device", default_value="", description="overrides device (cpu, cuda, cuda:1)"),
            DeclareLaunchArgument(
                "model_dtype", default_value="", description="overrides model_dtype (float32, bfloat16, float16)"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
            OpaqueFunction(function=_node),
        ]
    )
