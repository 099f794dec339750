"""Side-by-side timing for the benchmarks: every side runs once per round, in a rotated order, so a busy
machine slows all sides alike; results are medians and ratios against a measured baseline side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timings:
    """Milliseconds per side, one value per round (the same rounds for every side)."""

    ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.ms.values()), default=0)

    def median(self, side: str) -> float:
        return statistics.median(self.ms[side])

    def p90(self, side: str) -> float:
        return float(np.percentile(self.ms[side], 90))

    def ratio(self, side: str, baseline: str) -> float:
        """Ratio of the medians."""
        return self.median(side) / self.median(baseline)

    def paired_ratio(self, side: str, baseline: str) -> float:
        """Median of the per-round ratios: robust to load that changes between rounds."""
        return statistics.median(a / b for a, b in zip(self.ms[side], self.ms[baseline]))

    def table(self) -> str:
        return "\n".join(
            f"  {k:10s} median {self.median(k):9.2f} ms   p90 {self.p90(k):9.2f} ms   (n={len(v)})"
            for k, v in self.ms.items()
        )

    def ratio_line(self, side: str, baseline: str, note: str = "") -> str:
        return (
            f"ratio {side}/{baseline} = {self.ratio(side, baseline):.3f} "
            f"(median of per-round ratios {self.paired_ratio(side, baseline):.3f}){'  ' + note if note else ''}"
        )


def interleave(
    sides: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> Timings:
    """Time every side once per round; the order rotates each round (round r starts with side r mod n).

    Args:
        sides: name -> a call that does one unit of work (its result is dropped).
        rounds: timed rounds; each side gets exactly this many values.
        warmup: untimed rounds first (allocator, caches, lazy init).
        sync: called before starting and after stopping each clock (``torch.cuda.synchronize`` on a GPU).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    out = Timings({name: [] for name in names})
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            t0 = time.perf_counter()
            sides[name]()
            sync()
            out.ms[name].append((time.perf_counter() - t0) * 1000.0)
    return out
