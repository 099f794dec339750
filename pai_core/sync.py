"""Assembling observations from inputs that arrive separately (camera topics, joint states).

Shared by the live node (newest complete observation at each tick) and bag replay (an observation per
frame of the first camera, in time order). Inputs further apart than ``max_age_s`` are never combined;
frames replaced before they were used are counted, never silently lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .observation import Observation


@dataclass
class _Slot:
    stamp: float
    value: np.ndarray
    used: bool = False


@dataclass
class AssemblerStats:
    """Counts of what happened to inputs (for diagnostics and the replay report)."""

    received: Counter = field(default_factory=Counter)
    superseded: Counter = field(default_factory=Counter)  # replaced by a newer one before being used
    incomplete: int = 0  # ticks without a complete observation
    too_far_apart: int = 0  # ticks whose newest inputs were further apart than max_age_s


class ObservationAssembler:
    """Keeps the newest image per camera and the newest state, and combines them on request.

    Args:
        cameras: policy image feature names to wait for.
        needs_state: whether a state vector is required.
        max_age_s: largest allowed spread of input stamps inside one observation.
    """

    def __init__(self, cameras: list[str], needs_state: bool = True, max_age_s: float = 0.5):
        self.cameras = list(cameras)
        self.needs_state = needs_state
        self.max_age_s = max_age_s
        self._slots: dict[str, _Slot] = {}
        self.stats = AssemblerStats()

    def _put(self, key: str, stamp: float, value: np.ndarray) -> None:
        old = self._slots.get(key)
        if old is not None and not old.used:
            self.stats.superseded[key] += 1
        self.stats.received[key] += 1
        self._slots[key] = _Slot(stamp, value)

    def add_image(self, feature: str, stamp: float, rgb: np.ndarray) -> None:
        self._put(feature, stamp, rgb)

    def add_state(self, stamp: float, state: np.ndarray) -> None:
        self._put("observation.state", stamp, state)

    @property
    def required(self) -> list[str]:
        return self.cameras + (["observation.state"] if self.needs_state else [])

    def newest_stamp(self) -> float | None:
        return max((s.stamp for s in self._slots.values()), default=None)

    def missing(self) -> list[str]:
        return [k for k in self.required if k not in self._slots]

    def take(self) -> Observation | None:
        """The newest complete observation, or None (counted) when an input is missing or too old."""
        if self.missing():
            self.stats.incomplete += 1
            return None
        slots = [self._slots[k] for k in self.required]
        stamps = [s.stamp for s in slots]
        if max(stamps) - min(stamps) > self.max_age_s:
            self.stats.too_far_apart += 1
            return None
        for s in slots:
            s.used = True
        state = self._slots.get("observation.state")
        return Observation(
            images={k: self._slots[k].value for k in self.cameras},
            state=state.value if state is not None else None,
            timestamp=max(stamps),
        )

    def unused_at_end(self) -> dict[str, int]:
        """Inputs received but never part of an observation (call when a stream ends)."""
        return {k: 1 for k, s in self._slots.items() if not s.used}
