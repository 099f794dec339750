"""Feature labels in ``labels.json``: {"features": {"12": {"name": ..., "description": ...}}}.

The file ``pai_core.pipeline.load_labels`` reads, so a label saved here shows up by name in the node's
and replay's outputs once the file sits beside the SAE. Every save re-reads, merges and rewrites under
a file lock (so two editors never lose each other's labels) and replaces the file atomically (a reader
never sees half a file). Only the standard library and ``filelock``: this module is copied into
exported Hugging Face Spaces.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

LABELS_NAME = "labels.json"


def read_labels(path: str | Path) -> dict:
    """The whole labels document ({"features": {}} when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {"features": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("features", {}), dict):
        raise ValueError(f'{path} must hold {{"features": {{"<id>": {{"name": ...}}}}}}')
    data.setdefault("features", {})
    return data


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LabelStore:
    """Labels of one analysis, optionally mirrored into further files (the SAE's ``labels.json``).

    Args:
        path: the primary ``labels.json``.
        mirrors: more ``labels.json`` files each save is merged into (same locking).
        timeout_s: how long a save waits for another writer's lock.
    """

    def __init__(self, path: str | Path, mirrors: Sequence[str | Path] | None = None, timeout_s: float = 30.0):
        self.path = Path(path)
        self.mirrors = [Path(m) for m in mirrors or []]
        self.timeout_s = timeout_s

    def all(self) -> dict[int, dict]:
        """Feature id -> {"name", "description", ...}, read fresh from disk (other editors may have saved)."""
        return {int(k): v for k, v in read_labels(self.path)["features"].items() if isinstance(v, dict)}

    def get(self, feature: int) -> dict:
        return self.all().get(int(feature), {"name": "", "description": ""})

    def save(self, feature: int, name: str, description: str = "") -> dict:
        """Set (or, with empty name and description, remove) one feature's label in every file; returns it."""
        feature = int(feature)
        if feature < 0:
            raise ValueError(f"feature id must be >= 0, got {feature}")
        entry = {"name": name.strip(), "description": description.strip(), "updated": time.time()}
        for path in [self.path, *self.mirrors]:
            with FileLock(str(path) + ".lock", timeout=self.timeout_s):
                data = read_labels(path)
                if entry["name"] or entry["description"]:
                    data["features"][str(feature)] = entry
                else:
                    data["features"].pop(str(feature), None)
                data["features"] = dict(sorted(data["features"].items(), key=lambda kv: int(kv[0])))
                write_atomic(path, json.dumps(data, indent=2) + "\n")
        return entry
