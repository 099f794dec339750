"""The one batched loop (pai_core.replay.runner): segments, batching, sink order with write-behind, errors.

The stepper is a small stand-in that records what it was given (the loop under test never looks inside a
frame's result); every job's real outputs are checked by its own tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest

from pai_core.errors import InputError, PaiError
from pai_core.observation import Observation
from pai_core.pipeline import Frame
from pai_core.replay.runner import RunConfig, Segment, run, run_segments
from pai_core.sources.accounting import Accounting


class Stepper:
    """Frames for the observations it is given; rejects an observation whose frame_index is in ``bad``."""

    def __init__(self, bad: Sequence[int] = ()):
        self.bad, self.calls, self.resets = set(bad), [], 0

    def step_batch(self, observations: Sequence[Observation]) -> list[Frame]:
        self.calls.append([o.frame_index for o in observations])
        if any(o.frame_index in self.bad for o in observations):
            raise InputError("bad frame")
        return [Frame(o, None) for o in observations]  # type: ignore[arg-type]

    def reset(self) -> None:
        self.resets += 1


class Log:
    """A sink that records every call, with the thread it came from."""

    def __init__(self, fail_at: int | None = None):
        self.events: list[tuple] = []
        self.threads: set[str] = set()
        self.fail_at, self.closed = fail_at, False

    def begin(self, key) -> None:
        self.events.append(("begin", key))

    def write(self, frames: Sequence[Frame]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and any(f.observation.frame_index == self.fail_at for f in frames):
            raise RuntimeError(f"sink failed at frame {self.fail_at}")
        self.events.append(("write", [f.observation.frame_index for f in frames]))

    def end(self, key) -> None:
        self.events.append(("end", key))

    def close(self) -> None:
        self.closed = True


def observations(first: int, n: int) -> Iterator[Observation]:
    for i in range(first, first + n):
        yield Observation(images={"cam": np.zeros((2, 2, 3), np.uint8)}, timestamp=0.1 * i, frame_index=i)


@pytest.mark.parametrize("write_behind", [0, 2])
def test_segments_reset_the_pipeline_batch_apart_and_reach_the_sinks_in_order(write_behind):
    stepper, log = Stepper(), Log()
    entered: list[int] = []

    @contextmanager
    def leaving_out(ep: int):
        entered.append(ep)
        yield

    segments = [
        Segment(0, observations(0, 5), context=lambda: leaving_out(0)),
        Segment(1, observations(10, 2)),
        Segment(2, batches=[list(observations(20, 1)), list(observations(21, 3))]),
    ]
    config = RunConfig(batch_size=2, progress=False, write_behind=write_behind)
    stats = run_segments(segments, stepper, [log], config=config)
    assert stepper.calls == [[0, 1], [2, 3], [4], [10, 11], [20], [21, 22, 23]]  # never across two segments
    assert stepper.resets == 3 and entered == [0]
    assert log.events == [
        ("begin", 0),
        ("write", [0, 1]),
        ("write", [2, 3]),
        ("write", [4]),
        ("end", 0),
        ("begin", 1),
        ("write", [10, 11]),
        ("end", 1),
        ("begin", 2),
        ("write", [20]),
        ("write", [21, 22, 23]),
        ("end", 2),
    ]
    assert stats.frames == 11 and log.closed
    assert log.threads == ({"pai-sink-writer"} if write_behind else {threading.current_thread().name})


class ModelLog(Log):
    """A sink that runs the model itself (as ``SaliencySink``): it must never run beside the next step."""

    runs_model = True

    def __init__(self, stepper: Stepper):
        super().__init__()
        self.stepper, self.steps_seen = stepper, []

    def write(self, frames: Sequence[Frame]) -> None:
        super().write(frames)
        self.steps_seen.append(len(self.stepper.calls))


def test_a_sink_that_runs_the_model_is_called_in_the_runners_thread_right_after_its_step():
    stepper = Stepper()
    model_sink, log = ModelLog(stepper), Log()
    config = RunConfig(batch_size=2, progress=False, write_behind=2)
    run_segments([Segment(0, observations(0, 6))], stepper, [model_sink, log], config=config)
    assert model_sink.threads == {threading.current_thread().name} and log.threads == {"pai-sink-writer"}
    assert model_sink.steps_seen == [1, 2, 3]  # each batch before the next step_batch, in order
    assert [e for e in model_sink.events if e[0] != "write"] == [("begin", 0), ("end", 0)]
    assert [e for e in log.events if e[0] == "write"] == [e for e in model_sink.events if e[0] == "write"]


def test_a_rejected_observation_is_skipped_with_its_reason_or_raised():
    accounting, log = Accounting(), Log()
    run(observations(0, 4), Stepper(bad=[2]), [log], accounting, RunConfig(batch_size=4, progress=False))
    assert [e for e in log.events if e[0] == "write"] == [("write", [0, 1, 3])]
    assert accounting.frames_skipped == {"rejected by the engine: bad frame": 1}
    log = Log()
    with pytest.raises(InputError, match="bad frame"):
        run(
            observations(0, 4),
            Stepper(bad=[2]),
            [log],
            config=RunConfig(batch_size=4, progress=False, rejected="raise"),
        )
    assert log.closed


def test_a_failing_sink_stops_the_run_and_every_sink_is_closed():
    failing, other = Log(fail_at=2), Log()
    stepper = Stepper()
    with pytest.raises(RuntimeError, match="sink failed at frame 2"):
        run(observations(0, 20), stepper, [failing, other], config=RunConfig(batch_size=2, progress=False))
    assert failing.closed and other.closed
    assert len(stepper.calls) < 10  # stopped within the write-behind depth, not at the end of the source


def test_a_source_error_keeps_the_frames_before_it_and_is_recorded():
    def broken() -> Iterator[Observation]:
        yield from observations(0, 3)
        raise PaiError("bag truncated")

    accounting, log = Accounting(), Log()
    with pytest.raises(PaiError, match="bag truncated"):
        run(broken(), Stepper(), [log], accounting, RunConfig(batch_size=2, progress=False))
    assert [e[1] for e in log.events if e[0] == "write"] == [[0, 1], [2]]
    assert accounting.error == "bag truncated" and accounting.frames_processed == 3 and log.closed
