"""Safe stop without ROS (pai_core.safe_stop): attempts, timeouts, back-off and their record.

The back end here answers from a script (the StopBackend protocol itself); the real rclpy back ends against real
service servers that succeed, refuse and hang are in tests/test_ros_safe_stop.py.
"""

from __future__ import annotations

import pytest

from pai_core.safe_stop import SafeStop, TopicOnly
from pai_core.settings import SafeStopSettings, SettingsError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ScriptedBackend:
    """Answers attempt i with ``script[i]``: True (stopped), False (refused), None (no answer), "raise",
    "unavailable"; records every call and cancel."""

    target = "scripted /stop"

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.calls = 0
        self.cancelled: list[int] = []
        self.pending: dict[int, object] = {}
        self.available = True

    def ready(self) -> bool:
        if self.script and self.script[0] == "unavailable":
            self.script.pop(0)
            return False
        return self.available

    def call(self, done):
        self.calls += 1
        answer = self.script.pop(0) if self.script else True
        if answer == "raise":
            raise RuntimeError("transport broke")
        if answer is None:
            self.pending[self.calls] = done
        else:
            done(answer, "motors off" if answer else "robot busy")
        return self.calls

    def cancel(self, handle) -> None:
        self.cancelled.append(handle)


def make(script: list, **kw) -> tuple[SafeStop, ScriptedBackend, Clock, list]:
    clock, logs = Clock(), []
    backend = ScriptedBackend(script)
    stop = SafeStop(
        backend,
        clock=clock,
        log=lambda level, text: logs.append((level, text)),
        **{"timeout_s": 1.0, "retry_s": 0.5, "retry_max_s": 2.0, **kw},
    )
    return stop, backend, clock, logs


def advance(stop: SafeStop, clock: Clock, seconds: float, step: float = 0.1) -> None:
    for _ in range(int(round(seconds / step))):
        clock.t += step
        stop.poll()


def test_a_robot_that_answers_stopped_is_asked_once():
    stop, backend, clock, logs = make([True])
    stop.request("OOD score above 0.1")
    advance(stop, clock, 5.0)
    assert backend.calls == 1 and stop.state == "stopped"
    summary = stop.summary()
    assert summary["safe_stop_state"] == "stopped" and summary["safe_stop_attempts"] == "1"
    assert summary["safe_stop_attempt_1"] == "success after 0.00 s: motors off"
    assert summary["safe_stop_reason"] == "OOD score above 0.1"
    assert logs == [("info", "safe stop attempt 1 (scripted /stop): success after 0.00 s: motors off")]


def test_refusals_are_retried_with_doubling_waits_until_the_robot_stops():
    stop, backend, clock, logs = make([False, False, False, False, True])
    stop.request("alarm")
    advance(stop, clock, 8.0, step=0.0625)  # exact in binary: due times are hit, not missed by rounding
    assert stop.state == "stopped" and backend.calls == 5
    # attempt 1 at once, then waits of 0.5, 1.0, 2.0 and 2.0 (retry_max_s)
    starts = [a.started - 1000.0 for a in stop.attempts]
    assert starts == [0.0, 0.5, 1.5, 3.5, 5.5]
    assert [a.outcome for a in stop.attempts] == ["refused"] * 4 + ["success"]
    assert "retrying in 0.50 s" in logs[0][1] and logs[0][0] == "error"
    assert [stop.retry_delay(k) for k in range(1, 6)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_an_unanswered_attempt_times_out_is_cancelled_and_retried_and_a_late_yes_counts():
    stop, backend, clock, _ = make([None, None])
    stop.request("alarm")
    advance(stop, clock, 1.0)
    assert stop.attempts[0].outcome == "timeout" and backend.cancelled == [1]
    assert "no answer from scripted /stop within 1 s" in stop.summary()["safe_stop_attempt_1"]
    advance(stop, clock, 0.6)  # retry_s later: attempt 2, also unanswered
    assert backend.calls == 2 and stop.state == "stopping"
    backend.pending[2](True, "stopped at last")  # the robot answers while the attempt is still in flight
    assert stop.state == "stopped"
    backend.pending[1](True, "very late")  # attempt 1 answers after it timed out: recorded, nothing breaks
    assert "answered success later: very late" in stop.attempts[0].message


def test_a_missing_service_or_a_failing_transport_are_failed_attempts_that_are_retried():
    stop, backend, clock, _ = make(["unavailable", "raise", True])
    stop.request("alarm")
    advance(stop, clock, 3.0)
    assert [a.outcome for a in stop.attempts] == ["unavailable", "error", "success"]
    assert stop.attempts[0].message == "scripted /stop is not available"
    assert stop.attempts[1].message == "RuntimeError: transport broke"


def test_a_reset_stops_the_retries_and_a_new_alarm_starts_over():
    stop, backend, clock, _ = make([False] * 10)
    stop.request("alarm")
    advance(stop, clock, 1.0)
    calls = backend.calls
    stop.cancel()
    advance(stop, clock, 5.0)
    assert backend.calls == calls and stop.state == "cancelled"
    stop.request("again")
    assert backend.calls == calls + 1 and stop.state == "stopping"
    stop.cancel()
    stop.cancel()
    assert stop.state == "idle"


def test_topic_only_answers_at_once_and_settings_choose_it_without_a_service():
    stop = SafeStop(TopicOnly())
    stop.request("alarm")
    assert stop.state == "stopped"
    assert "latched ~/safe_stop topic" in stop.summary()["safe_stop_result"]
    assert SafeStopSettings(service="").topic_only and SafeStopSettings(backend="topic").topic_only
    assert not SafeStopSettings().topic_only


def test_safe_stop_settings_refuse_unknown_back_ends_missing_controllers_and_impossible_times():
    with pytest.raises(
        SettingsError,
        match=r"safe_stop.backend='moveit' is not one of \['trigger', 'ros2_control', "
        r"'topic'\]",
    ):
        SafeStopSettings(backend="moveit")
    with pytest.raises(SettingsError, match="ros2_control needs safe_stop.controllers"):
        SafeStopSettings(backend="ros2_control")
    with pytest.raises(SettingsError, match=r"safe_stop.timeout_s=-1.0 must be positive"):
        SafeStopSettings(timeout_s=-1.0)
    with pytest.raises(SettingsError, match=r"retry_max_s=0.1 must be at least retry_s=0.5"):
        SafeStopSettings(retry_max_s=0.1)
    with pytest.raises(SettingsError, match=r"strictness='lenient' is not one of \['strict', 'best_effort'\]"):
        SafeStopSettings(strictness="lenient")
