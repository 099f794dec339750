"""Safe stop: asking the robot to stop when the alarm rises, until it says it has, and saying what happened.

A back end is one way to ask (``StopBackend``: a std_srvs/Trigger service, ros2_control's switch_controller, or
the latched ``~/safe_stop`` topic alone); the node builds the rclpy ones, ``TopicOnly`` lives here. ``SafeStop``
owns what must not depend on the transport: an attempt without an answer after ``timeout_s`` is abandoned, a
refused or failed attempt is retried after ``retry_s``, doubling up to ``retry_max_s``, while the alarm holds;
every attempt and its answer is kept for diagnostics. No rclpy here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Outcome = Literal["pending", "success", "refused", "timeout", "unavailable", "error"]
Done = Callable[[bool, str], None]


class StopBackend(Protocol):
    """One way to ask the robot to stop.

    ``call(done)`` sends the request and returns at once with a handle; the back end later calls
    ``done(ok, message)`` (from any thread) with the robot's answer, or raises/answers ``ok=False`` when the call
    fails. ``cancel(handle)`` abandons a request that timed out.
    """

    target: str

    def ready(self) -> bool: ...

    def call(self, done: Done) -> Any: ...

    def cancel(self, handle: Any) -> None: ...


class TopicOnly:
    """No service: the latched ``~/safe_stop`` topic (published on every alarm edge) is the whole request."""

    target = "latched ~/safe_stop topic only"

    def ready(self) -> bool:
        return True

    def call(self, done: Done) -> None:
        done(True, "stop requested on the latched ~/safe_stop topic")

    def cancel(self, handle: Any) -> None:
        pass


@dataclass
class Attempt:
    """One request to the robot. Times are the runner's clock (seconds)."""

    number: int
    started: float
    outcome: Outcome = "pending"
    message: str = ""
    ended: float | None = None
    handle: Any = None

    def line(self) -> str:
        took = f" after {self.ended - self.started:.2f} s" if self.ended is not None else ""
        return f"{self.outcome}{took}" + (f": {self.message}" if self.message else "")


State = Literal["idle", "stopping", "stopped", "cancelled"]


class SafeStop:
    """Attempts, timeouts and back-off of the stop request; ``poll()`` drives it (the runner calls it every tick).

    Args:
        backend: how to ask.
        timeout_s: an attempt without an answer after this long is abandoned and counts as failed.
        retry_s: wait after the first failed attempt; doubles after each further one.
        retry_max_s: the longest wait.
        clock: monotonic seconds (injectable for tests).
        log: ``log(level, text)`` for every answer.
    """

    def __init__(
        self,
        backend: StopBackend,
        timeout_s: float = 2.0,
        retry_s: float = 0.5,
        retry_max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str, str], None] | None = None,
    ):
        self.backend = backend
        self.timeout_s, self.retry_s, self.retry_max_s = timeout_s, retry_s, retry_max_s
        self.clock = clock
        self.log = log or (lambda level, text: None)
        self.state: State = "idle"
        self.reason = ""
        self.attempts: deque[Attempt] = deque(maxlen=20)
        self.total_attempts = 0
        self._failures = 0
        self._next_at = 0.0
        self._current: Attempt | None = None
        self._lock = threading.Lock()

    def request(self, reason: str) -> None:
        """The alarm rose: start asking (at the next ``poll``), until the robot says it stopped."""
        with self._lock:
            self.state, self.reason = "stopping", reason
            self._failures, self._next_at = 0, self.clock()
        self.poll()

    def cancel(self) -> None:
        """The alarm was reset: stop asking (an answer still in flight is recorded, nothing is retried)."""
        with self._lock:
            self.state = "cancelled" if self.state == "stopping" else "idle"

    def poll(self) -> None:
        """Time out the attempt in flight; start the next one when it is due."""
        now = self.clock()
        start: Attempt | None = None
        with self._lock:
            cur = self._current
            if cur is not None and now - cur.started >= self.timeout_s:
                self._finish(cur, "timeout", f"no answer from {self.backend.target} within {self.timeout_s:g} s", now)
                handle = cur.handle
            else:
                handle = None
            if self.state == "stopping" and self._current is None and now >= self._next_at:
                self.total_attempts += 1
                start = self._current = Attempt(self.total_attempts, now)
                self.attempts.append(start)
        if handle is not None:
            self._safely(lambda: self.backend.cancel(handle))
        if start is not None:
            self._start(start)

    def _start(self, attempt: Attempt) -> None:
        try:
            if not self.backend.ready():
                self._answer(attempt, "unavailable", f"{self.backend.target} is not available")
                return
            attempt.handle = self.backend.call(
                lambda ok, message: self._answer(attempt, "success" if ok else "refused", message)
            )
        except Exception as exc:  # a back end that throws is a failed attempt, never a dead runner
            self._answer(attempt, "error", f"{type(exc).__name__}: {exc}")

    def _answer(self, attempt: Attempt, outcome: Outcome, message: str) -> None:
        with self._lock:
            if attempt.outcome == "timeout" and outcome == "success":
                # a late yes still means the robot stopped
                attempt.message += f"; answered success later: {message}"
                self.state = "stopped" if self.state == "stopping" else self.state
                return
            if attempt.outcome != "pending":
                return
            self._finish(attempt, outcome, message, self.clock())

    def _finish(self, attempt: Attempt, outcome: Outcome, message: str, now: float) -> None:
        """Record an attempt's end (caller holds the lock) and decide what comes next."""
        attempt.outcome, attempt.message, attempt.ended = outcome, message, now
        if self._current is attempt:
            self._current = None
        if outcome == "success":
            if self.state == "stopping":
                self.state = "stopped"
            level = "info"
        else:
            self._failures += 1
            self._next_at = now + self.retry_delay(self._failures)
            level = "error"
        self.log(
            level,
            f"safe stop attempt {attempt.number} ({self.backend.target}): {attempt.line()}"
            + (
                f"; retrying in {self._next_at - now:.2f} s"
                if outcome != "success" and self.state == "stopping"
                else ""
            ),
        )

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt in a row."""
        return min(self.retry_s * 2 ** (failures - 1), self.retry_max_s)

    def _safely(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            self.log("warn", f"safe stop: cancelling a request failed: {type(exc).__name__}: {exc}")

    def summary(self) -> dict[str, str]:
        """Diagnostics values: back end, state, attempts, and each recent attempt with its answer."""
        with self._lock:
            out = {
                "safe_stop_backend": self.backend.target,
                "safe_stop_state": self.state,
                "safe_stop_reason": self.reason,
                "safe_stop_attempts": str(self.total_attempts),
            }
            if self.state == "stopping" and self._current is None and self.total_attempts:
                out["safe_stop_next_attempt_in_s"] = f"{max(0.0, self._next_at - self.clock()):.2f}"
            for a in list(self.attempts)[-5:]:
                out[f"safe_stop_attempt_{a.number}"] = a.line()
            last = self.attempts[-1] if self.attempts else None
            out["safe_stop_result"] = last.line() if last else ""
        return out
