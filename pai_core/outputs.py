"""Output folders: one clear line when a folder cannot hold a command's results (it is a file, lies under
a file, or cannot be written), instead of a traceback from deep inside a writer."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def prepare_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written into it."""
    out = Path(path).expanduser()
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"lies under {parent}, which is a file"
            raise UsageError(f"{what} {out} {where}; choose a folder")
        if parent.exists():
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Could not create {what} {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {out} is not writable")
    return out


__all__ = ["prepare_output_dir"]
