"""ROS 2 adapter of pai: the live introspection node over ``pai_core`` (which never imports rclpy)."""
