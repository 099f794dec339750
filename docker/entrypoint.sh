#!/bin/bash
# ROS 2, the pai venv (torch, pai_core) and the built ros2_ws, then the command.
set -e
source /opt/ros/jazzy/setup.bash
source /pai/.venv/bin/activate
source /pai/ros2_ws/install/setup.bash
exec "$@"
