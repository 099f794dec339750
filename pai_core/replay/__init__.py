"""Offline replay: rosbags and LeRobot episodes through the same ``Pipeline`` as the live node, written
out as overlay videos, Parquet tables, an MCAP of the node's topics, and an HTML report.

One module per job: ``accounting`` (where every input went), ``prefetch`` (reader thread), ``runner``
(batched pipeline loop), ``run_info`` (what the sinks know of the run), ``video``, ``tables``,
``encoding`` + ``mcap_sink``, ``foxglove_sink``, ``ros_publish`` (lazy rclpy), ``report``.
"""

from .accounting import Accounting, InputCount

__all__ = ["Accounting", "InputCount"]
