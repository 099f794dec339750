"""The one batched loop: observations in, ``step_batch``, frames out to every sink.

Replay, OOD scoring and calibration, feature and activation recording, and the feature analysis's
renders all run here, each job with a sink of its own, so batching, episode resets, reading ahead in
a thread and closing the outputs when a run breaks off are written once. No processing of its own: the
frames are exactly what the live node's pipeline computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import InputError, PaiError
from ..observation import Observation
from ..pipeline import Frame
from ..sources.accounting import Accounting
from .prefetch import prefetch
from .write_behind import WriteBehind, write_all


class Sink(Protocol):
    """Consumes processed frames in time order; ``close`` runs even when the run breaks off.

    A sink may also define ``begin(key)`` and ``end(key)``: called before the first and after the last
    frame of each ``Segment`` (``end`` only when the segment ran to its end). The calls come from one
    thread, in order, but not the runner's (``RunConfig.write_behind``), except for a sink that runs the
    model itself (``runs_model = True``, e.g. ``SaliencySink``): it is called in the runner's thread, between
    two steps, because the engine's hooks hold one forward pass at a time.
    """

    def write(self, frames: Sequence[Frame]) -> None: ...

    def close(self) -> None: ...


class Stepper(Protocol):
    """What the loop runs: a ``Pipeline``, or ``EngineStepper`` for jobs that need the engine alone."""

    def step_batch(self, observations: Sequence[Observation]) -> list[Frame]: ...

    def reset(self) -> None: ...


class EngineStepper:
    """An ``Introspector`` as a ``Stepper``: frames with the engine's result only (no SAE, OOD or alarm), for
    the jobs that record the engine's tokens or backbone maps."""

    def __init__(self, engine: Any):
        self.engine = engine

    def step_batch(self, observations: Sequence[Observation]) -> list[Frame]:
        return [Frame(o, r) for o, r in zip(observations, self.engine.step_batch(observations))]

    def reset(self) -> None:
        self.engine.reset()


@dataclass
class Segment:
    """Consecutive observations the pipeline starts afresh on (an episode, or a shard of one).

    Args:
        key: what the sinks' ``begin`` / ``end`` are told (an episode index, a shard).
        observations: the observations in time order, batched by ``RunConfig.batch_size``; read in a
            thread ahead of the model.
        batches: instead of ``observations``: the batches as the job made them (each one ``step_batch`` call).
        context: entered around the segment's steps (a scorer leaving out the episode's own reference).
    """

    key: Any = None
    observations: Iterable[Observation] | None = None
    batches: Iterable[Sequence[Observation]] | None = None
    context: Callable[[], AbstractContextManager] | None = None

    def __post_init__(self) -> None:
        if (self.observations is None) == (self.batches is None):
            raise ValueError("Segment needs observations or batches (exactly one of them)")


@dataclass
class RunConfig:
    """Args:
    batch_size: observations per ``step_batch`` call.
    prefetch: decoded observations (or batches) the reader thread may hold ahead of the model.
    progress: show a tqdm progress bar.
    desc: the progress bar's label.
    write_behind: calls (a batch's frames, a segment's begin or end) the sinks may lag behind the model, in
        a thread of their own (``write_behind.WriteBehind``); 0 writes in the model's thread.
    rejected: an observation the engine rejects (``InputError``): "skip" it with its reason in the
        accounting (replay: the rest of its batch still runs), or "raise" the error (jobs whose output
        must hold every frame).
    """

    batch_size: int = 8
    prefetch: int = 32
    progress: bool = True
    desc: str = "replay"
    rejected: Literal["skip", "raise"] = "skip"
    write_behind: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1")
        if self.rejected not in ("skip", "raise"):
            raise ValueError(f"rejected={self.rejected!r} is not one of 'skip', 'raise'")
        if self.write_behind < 0:
            raise ValueError(f"write_behind={self.write_behind} must be >= 0")


@dataclass
class RunStats:
    """Timing of a replay (the report and the benchmark show these)."""

    frames: int = 0
    wall_s: float = 0.0
    pipeline_s: float = 0.0
    first_stamp: float | None = None
    last_stamp: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def span_s(self) -> float:
        return (
            (self.last_stamp - self.first_stamp)
            if self.first_stamp is not None and self.last_stamp is not None
            else 0.0
        )

    @property
    def realtime_factor(self) -> float:
        """Recorded seconds per wall-clock second (over the processed frames)."""
        return self.span_s / self.wall_s if self.wall_s > 0 and self.frames > 1 else 0.0


def _batches(items: Iterator[Observation], size: int) -> Iterator[list[Observation]]:
    """Batches of ``size``; when the source fails, the observations read before the failure still come
    out as a last batch before the error."""
    batch: list[Observation] = []
    try:
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
    except PaiError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def run(
    observations: Iterable[Observation],
    pipeline: Stepper,
    sinks: Sequence[Sink],
    accounting: Accounting | None = None,
    config: RunConfig | None = None,
    total: int | None = None,
) -> RunStats:
    """Replay ``observations`` (in time order, one segment) through ``pipeline`` into ``sinks``."""
    return run_segments([Segment(observations=observations)], pipeline, sinks, accounting, config, total)


def run_segments(
    segments: Iterable[Segment],
    pipeline: Stepper,
    sinks: Sequence[Sink],
    accounting: Accounting | None = None,
    config: RunConfig | None = None,
    total: int | None = None,
) -> RunStats:
    """Run every segment through ``pipeline`` into ``sinks``: the pipeline is reset before each segment
    (LeRobot's queue, the scorers' history, the alarm), and batches never span two segments.

    An observation the engine rejects is skipped with its reason (the rest of its batch still runs) or
    raised, per ``config.rejected``. A source error (``PaiError``, e.g. a truncated bag) stops the run after
    the frames before it were processed and every sink closed; it is recorded in ``accounting.error`` and
    re-raised.
    """
    from tqdm.auto import tqdm

    config = config or RunConfig()
    accounting = accounting if accounting is not None else Accounting()
    stats = RunStats()
    start = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc=config.desc, disable=not config.progress, dynamic_ncols=True)
    behind = WriteBehind(config.write_behind) if config.write_behind > 0 else None

    inline = [s for s in sinks if getattr(s, "runs_model", False)]  # never beside the model's next step
    later = [s for s in sinks if s not in inline]

    def emit(fn: Callable[..., Any], *args: Any) -> None:
        if behind is None:
            fn(*args)
        else:
            behind.call(fn, *args)

    def each(method: str, *args: Any) -> None:
        for sink in inline:
            if hasattr(sink, method):
                getattr(sink, method)(*args)
        for sink in later:
            if hasattr(sink, method):
                emit(getattr(sink, method), *args)

    try:
        for segment in segments:
            pipeline.reset()
            each("begin", segment.key)
            with segment.context() if segment.context is not None else nullcontext():
                for batch in _segment_batches(segment, config):
                    t0 = time.perf_counter()
                    frames = _step(pipeline, batch, accounting, config.rejected)
                    stats.pipeline_s += time.perf_counter() - t0
                    if frames:
                        write_all(inline, frames)
                        emit(write_all, later, frames)
                        stats.frames += len(frames)
                        accounting.frames_processed += len(frames)
                        if stats.first_stamp is None:
                            stats.first_stamp = float(frames[0].observation.timestamp)
                        stats.last_stamp = float(frames[-1].observation.timestamp)
                    bar.update(len(batch))
            each("end", segment.key)
        if behind is not None:
            behind.finish()
    except PaiError as exc:
        accounting.error = str(exc)
        raise
    finally:
        bar.close()
        if behind is not None:
            behind.stop()  # the frames stepped before an error still reach the sinks
        stats.wall_s = time.perf_counter() - start
        errors = []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # one broken sink must not lose the others' files
                errors.append(f"{type(sink).__name__}: {exc}")
        if errors and not accounting.error:
            raise PaiError("Could not finish outputs: " + "; ".join(errors))
    return stats


def _segment_batches(segment: Segment, config: RunConfig) -> Iterator[Sequence[Observation]]:
    if segment.batches is not None:
        return prefetch(segment.batches, max(1, config.prefetch // config.batch_size))
    assert segment.observations is not None
    return _batches(prefetch(segment.observations, config.prefetch), config.batch_size)


def _step(
    pipeline: Stepper, batch: Sequence[Observation], accounting: Accounting, rejected: str = "skip"
) -> list[Frame]:
    if rejected == "raise":
        return pipeline.step_batch(batch)
    try:
        return pipeline.step_batch(batch)
    except InputError:
        pass
    # One observation is bad: run them one by one so only that one is skipped (the alarm still advances
    # in time order over the good ones).
    frames = []
    for obs in batch:
        try:
            frames.extend(pipeline.step_batch([obs]))
        except InputError as exc:
            accounting.skip_frame(f"rejected by the engine: {exc}")
    return frames
