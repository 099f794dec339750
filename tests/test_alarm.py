"""The alarm policy: n of the last m frames raise it, latch holds it, clear rules drop it."""

from __future__ import annotations

import pytest

from pai_core.alarm import AlarmConfig, AlarmPolicy

THRESHOLD = 1.0


def feed(policy: AlarmPolicy, above: list[int]) -> list[bool]:
    """Feed frames (1: above threshold, 0: below) and return the alarm after each."""
    return [policy.update(2.0 if a else 0.5, THRESHOLD).active for a in above]


def test_alarm_rises_on_the_frame_that_makes_n_of_the_last_m_above_threshold():
    policy = AlarmPolicy(AlarmConfig(n=3, m=5))
    assert feed(policy, [1, 0, 1, 0, 1]) == [False, False, False, False, True]
    assert "3 of last 5" in policy.state.reason


def test_alarm_stays_down_when_above_threshold_frames_are_spread_wider_than_the_window():
    policy = AlarmPolicy(AlarmConfig(n=2, m=3))
    assert not any(feed(policy, [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]))
    assert policy.state.above == 1


def test_a_score_equal_to_the_threshold_does_not_count_as_above():
    policy = AlarmPolicy(AlarmConfig(n=1, m=1))
    assert not policy.update(THRESHOLD, THRESHOLD).active
    assert policy.update(THRESHOLD + 1e-9, THRESHOLD).active


def test_latched_alarm_holds_through_normal_frames_until_reset():
    policy = AlarmPolicy(AlarmConfig(n=2, m=2, latch=True, clear_after=1))
    states = feed(policy, [1, 1] + [0] * 20)
    assert states[:1] == [False] and all(states[1:])
    policy.reset()
    assert not policy.state.active
    assert feed(policy, [0, 1]) == [False, False]  # the window restarted too


def test_unlatched_alarm_clears_after_clear_after_consecutive_normal_frames():
    policy = AlarmPolicy(AlarmConfig(n=1, m=1, latch=False, clear_after=3))
    # A normal frame interrupted by an above-threshold one restarts the count.
    assert feed(policy, [1, 0, 0, 1, 0, 0, 0, 0]) == [True, True, True, True, True, True, False, False]


def test_fault_raises_the_alarm_with_its_reason_and_keeps_an_existing_reason():
    policy = AlarmPolicy(AlarmConfig())
    assert policy.fault("camera stale for 2.0 s").active
    assert policy.state.reason == "camera stale for 2.0 s"
    assert policy.fault("engine failed").reason == "camera stale for 2.0 s"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n": 4, "m": 3}, "n=4 and m=3"), ({"n": 0, "m": 3}, "n=0"), ({"clear_after": 0}, "clear_after=0")],
)
def test_invalid_alarm_settings_are_rejected_naming_the_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlarmConfig(**kwargs)


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_a_score_that_is_not_a_number_raises_the_alarm_at_once_as_a_fault(score):
    policy = AlarmPolicy(AlarmConfig(n=3, m=5))
    assert not policy.update(0.1, 1.0).active
    state = policy.update(score, 1.0)
    assert state.active and "monitoring impossible" in state.reason and str(score) in state.reason
