"""Alarm policy: turns per-frame OOD decisions into an alarm that a robot can act on.

Pure and small, so the ROS node and replay share it: raise after ``n`` of the last ``m`` frames are
above threshold (or on a fault: stale inputs, engine failure), latch until reset when ``latch`` is set,
otherwise clear after ``clear_after`` consecutive frames below threshold.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class AlarmConfig:
    """Args:
    n: frames above threshold among the last ``m`` that raise the alarm.
    m: window length in frames.
    latch: keep the alarm raised until ``reset()`` (the safe choice on a robot).
    clear_after: without latch, consecutive frames below threshold that clear the alarm.
    """

    n: int = 3
    m: int = 5
    latch: bool = True
    clear_after: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.n <= self.m:
            raise ValueError(f"alarm n={self.n} and m={self.m} need 1 <= n <= m")
        if self.clear_after < 1:
            raise ValueError(f"alarm clear_after={self.clear_after} must be at least 1")


@dataclass
class AlarmState:
    active: bool
    reason: str
    above: int  # frames above threshold in the current window


class AlarmPolicy:
    def __init__(self, config: AlarmConfig | None = None):
        self.config = config or AlarmConfig()
        self.reset()

    def reset(self) -> None:
        self._window: deque[bool] = deque(maxlen=self.config.m)
        self._below_run = 0
        self.state = AlarmState(False, "", 0)

    def update(self, score: float, threshold: float, source: str = "OOD score") -> AlarmState:
        """Feed one frame's score; returns the alarm state after it. A score that is not a finite number
        (e.g. features that overflowed) cannot be judged, so it raises the alarm as a fault. ``source``
        names the signal in the reason (with several signals the score is the largest score/threshold
        ratio and ``threshold`` is 1)."""
        if not math.isfinite(score):
            self._window.append(True)
            self._below_run = 0
            return self.fault(f"{source} is {score}: monitoring impossible")
        above = bool(score > threshold)
        self._window.append(above)
        count = sum(self._window)
        self._below_run = 0 if above else self._below_run + 1
        if not self.state.active and count >= self.config.n:
            what = (
                f"{source} above {threshold:.4g}"
                if threshold != 1.0 or source == "OOD score"
                else f"{source} above its threshold"
            )
            self.state = AlarmState(True, f"{what} in {count} of last {len(self._window)} frames", count)
        elif self.state.active and not self.config.latch and self._below_run >= self.config.clear_after:
            self.state = AlarmState(False, "", count)
        else:
            self.state = AlarmState(self.state.active, self.state.reason, count)
        return self.state

    def fault(self, reason: str) -> AlarmState:
        """Raise the alarm because monitoring is impossible (fail-safe)."""
        if not self.state.active:
            self.state = AlarmState(True, reason, self.state.above)
        return self.state
