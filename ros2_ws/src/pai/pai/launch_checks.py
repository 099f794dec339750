"""Checks the launch file makes, kept free of ``launch`` imports so they are tested without it.

``ros2 launch`` only warns about a parameters file that does not exist and starts the node on its defaults, and it
exits 0 when the node dies; the launch file calls these to turn both into failures.
"""

from __future__ import annotations

import os


class LaunchError(RuntimeError):
    """A launch argument is unusable, or the node it started failed (``ros2 launch`` then exits non-zero)."""


def check_config(path: str) -> str:
    """The ``config:=`` parameters file must exist; returns its absolute path."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise LaunchError(f"config:={path}: no such file (relative paths are relative to {os.getcwd()})")
    return full


def overrides(values: dict) -> dict:
    """Launch arguments given on the command line (non-empty) that override the parameters file."""
    return {name: value for name, value in values.items() if value}


def exit_error(name: str, returncode: int | None, shutting_down: bool = False) -> str | None:
    """Why the node's exit is a failure of the launch, or None for a clean exit: 0, SIGINT (ctrl-c reaches the node
    too), and while the launch itself shuts down also SIGTERM (launch escalates SIGINT to SIGTERM after its
    sigterm_timeout). Anything else fails it: exit 2 (bad parameters, a missing folder, no GPU), a crash, a kill."""
    clean = (0, None, -2, -15) if shutting_down else (0, None, -2)
    if returncode in clean:
        return None
    what = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    hint = " (its error line is above)" if returncode == 2 else ""
    return f"{name} ended with {what}{hint}"
