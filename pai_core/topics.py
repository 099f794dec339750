"""Output topic names, relative to the node's namespace, shared by the live node and replay's MCAP.

Camera-specific topics use the last part of the policy image feature name ("observation.images.front"
-> "front").
"""

from .observation import camera_short  # the topics' {camera}

OVERLAY = "~/overlay/{camera}"  # sensor_msgs/Image rgb8, input header stamp
OVERLAY_COMPRESSED = "~/overlay/{camera}/compressed"  # sensor_msgs/CompressedImage jpeg
FEATURES = "~/features"  # std_msgs/Float32MultiArray, dim label "features"
FEATURE_NAMES = "~/feature_names"  # std_msgs/String (JSON list), transient local
ATTENTION_SHARE = "~/attention_share"  # std_msgs/Float32MultiArray [latent, state, cameras...]
OOD_SCORE = "~/ood_score"  # std_msgs/Float32
OOD_THRESHOLD = "~/ood_threshold"  # std_msgs/Float32
SIGNAL = "~/signal/{name}"  # std_msgs/Float32: a further OOD signal (action_consistency)
SIGNAL_THRESHOLD = "~/signal/{name}/threshold"  # std_msgs/Float32: its jointly calibrated threshold
ALARM = "~/alarm"  # std_msgs/Bool, transient local
SAFE_STOP = "~/safe_stop"  # std_msgs/Bool, transient local (latched stop request)
ACTION = "~/action"  # std_msgs/Float32MultiArray (A,)
ACTION_CHUNK = "~/action_chunk"  # std_msgs/Float32MultiArray (T, A)
JOINT_COMMAND = "~/joint_command"  # sensor_msgs/JointState: the next action in the robot's units
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray
RESET_ALARM = "~/reset_alarm"  # std_srvs/Trigger service

NODE_NAME = "pai_introspector"


def resolve(topic: str, camera: str = "", namespace: str = f"/{NODE_NAME}") -> str:
    """Absolute topic name (as replay writes it into MCAP) for a node in ``namespace``."""
    topic = topic.format(camera=camera_short(camera)) if "{camera}" in topic else topic
    return namespace.rstrip("/") + topic[1:] if topic.startswith("~") else topic
