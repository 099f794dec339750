"""Offline replay: rosbags and LeRobot episodes through the same ``Pipeline`` as the live node, written
out as overlay videos, Parquet tables, an MCAP of the node's topics, and an HTML report.

One module per job: ``prefetch`` (reader thread), ``runner`` (the batched pipeline loop), ``write_behind``
(the sinks' thread), ``run_info`` (what the sinks know of the run), ``video``, ``tables``, ``encoding`` +
``mcap_sink``, ``foxglove_sink``, ``ros_publish`` (lazy rclpy), ``report``. Where every input went
(``Accounting``) is the sources' record: ``pai_core.sources.accounting``.
"""
