"""Every error pai_core raises on purpose. Each names the offending input and what was expected.

PaiError
├── InputError (also a ValueError): something given to pai does not fit; catch it for "either kind"
│   ├── ObservationError: the data (an observation, a message, a recording's content) does not match
│   │   ├── MessageError       what the policy expects; the caller may skip that frame and go on
│   │   └── BagReadError
│   └── UsageError: a flag, an argument or a file names something wrong; fix the call and run again
│       └── ConfigError (alias SettingsError): a settings file, a node parameter or a config field
├── ModelError: a model (policy, SAE, OOD parameters) cannot be loaded or does not fit the others
├── RosUnavailable: rclpy or the ROS package sources are missing (the demo's ROS stage)
└── StageSkipped: a demo stage that cannot run here (reported as skipped, not failed)
"""


class PaiError(Exception):
    """Base class of every error pai_core raises on purpose."""


class InputError(PaiError, ValueError):
    """Something given to pai does not fit: the common base of ``ObservationError`` and ``UsageError``."""


class ObservationError(InputError):
    """The data does not match what the policy expects (camera, image size, state length, a dataset's
    features, a recording's content): that frame or source is wrong, not the way pai was called."""


class MessageError(ObservationError):
    """A ROS message cannot be turned into an observation input (encoding, size, NaN, names)."""


class BagReadError(ObservationError):
    """The bag could not be read to the end (corrupt or truncated); what came before was processed."""


class UsageError(InputError):
    """A flag, an argument or a path is wrong (missing file, occupied output folder, flags that exclude
    each other, a value out of range): fix the call and run again."""


class ConfigError(UsageError):
    """A settings file (``config/introspect.yaml``), a node parameter or a config dataclass field is invalid."""


#: the name ``pai_core.settings``, the ROS node and the tests have always used for ``ConfigError``.
SettingsError = ConfigError


class ModelError(PaiError):
    """A model (policy, SAE, OOD parameters) cannot be loaded or does not fit the others."""


class RosUnavailable(PaiError):
    """rclpy (or the ROS package sources) is not installed, so nothing can go through a live node."""


class StageSkipped(PaiError):
    """A stage that cannot run here (e.g. no rclpy): reported as skipped, not failed."""
