"""The replay loop: observations in, batched ``Pipeline.step_batch``, frames out to every sink.

No processing of its own: the frames are exactly what the live node's pipeline computes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import InputError, PaiError
from ..observation import Observation
from ..pipeline import Frame, Pipeline
from ..sources.accounting import Accounting
from .prefetch import prefetch


class Sink(Protocol):
    """Consumes processed frames in time order; ``close`` runs even when the replay breaks off."""

    def write(self, frames: Sequence[Frame]) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunConfig:
    """Args:
    batch_size: observations per ``Pipeline.step_batch`` call.
    prefetch: decoded observations the reader thread may hold ahead of the model.
    progress: show a tqdm progress bar.
    """

    batch_size: int = 8
    prefetch: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1")


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
    pipeline: Pipeline,
    sinks: Sequence[Sink],
    accounting: Accounting,
    config: RunConfig | None = None,
    total: int | None = None,
) -> RunStats:
    """Replay ``observations`` (in time order) through ``pipeline`` into ``sinks``.

    An observation the engine rejects is skipped with its reason (the rest of its batch still runs). A
    source error (``PaiError``, e.g. a truncated bag) stops the replay after the frames before it were
    processed and every sink closed; it is recorded in ``accounting.error`` and re-raised.
    """
    from tqdm.auto import tqdm

    config = config or RunConfig()
    stats = RunStats()
    pipeline.reset()
    start = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc="replay", disable=not config.progress, dynamic_ncols=True)
    try:
        for batch in _batches(prefetch(observations, config.prefetch), config.batch_size):
            t0 = time.perf_counter()
            frames = _step(pipeline, batch, accounting)
            stats.pipeline_s += time.perf_counter() - t0
            if frames:
                for sink in sinks:
                    sink.write(frames)
                stats.frames += len(frames)
                accounting.frames_processed += len(frames)
                if stats.first_stamp is None:
                    stats.first_stamp = float(frames[0].observation.timestamp)
                stats.last_stamp = float(frames[-1].observation.timestamp)
            bar.update(len(batch))
    except PaiError as exc:
        accounting.error = str(exc)
        raise
    finally:
        bar.close()
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


def _step(pipeline: Pipeline, batch: list[Observation], accounting: Accounting) -> list[Frame]:
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
