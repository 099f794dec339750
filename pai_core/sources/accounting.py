"""Where every input frame went: processed, or skipped with a reason (shown in the replay report).

Sources record what they could not turn into observations; the runner records what the engine refused.
Nothing is dropped silently: ``check`` verifies that the counts of every input add up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class InputCount:
    """What happened to the messages (or frames) of one input.

    Args:
        received: messages read from the source.
        used: messages that became part of at least one processed observation.
        skipped: reason -> count of messages that were not used.
    """

    received: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def unaccounted(self) -> int:
        return self.received - self.used - sum(self.skipped.values())


@dataclass
class Accounting:
    """Per input (topic or camera) counts plus the frame-level totals of a replay.

    Args:
        inputs: input name -> its counts.
        frames_processed: observations that went through the pipeline.
        frames_skipped: reason -> observations (frames of the driving camera) not processed.
        error: the error that ended the replay early ("" when it ran to the end).
        notes: what the user must know about the input although the replay ran (a truncated recording).
    """

    inputs: dict[str, InputCount] = field(default_factory=dict)
    frames_processed: int = 0
    frames_skipped: Counter = field(default_factory=Counter)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def input(self, name: str) -> InputCount:
        return self.inputs.setdefault(name, InputCount())

    def skip_frame(self, reason: str, count: int = 1) -> None:
        self.frames_skipped[reason] += count

    @property
    def frames_total(self) -> int:
        return self.frames_processed + sum(self.frames_skipped.values())

    def skip_summary(self) -> str:
        """Frames not processed, in one line grouped by kind ("12 no message yet on /a; 3 bad message (2
        kinds)"): a kind is the reason up to its first colon, so values do not make one line each."""
        kinds: dict[str, list[int]] = {}
        for reason, n in self.frames_skipped.items():
            kinds.setdefault(reason.split(":", 1)[0], []).append(n)
        return "; ".join(
            f"{sum(ns)} {kind}" + (f" ({len(ns)} kinds)" if len(ns) > 1 else "")
            for kind, ns in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))
        )

    def check(self) -> list[str]:
        """Inputs whose counts do not add up (empty when every message is accounted for)."""
        return [
            f"{name}: {c.unaccounted} of {c.received} messages unaccounted"
            for name, c in self.inputs.items()
            if c.unaccounted
        ]

    def to_dict(self) -> dict:
        return {
            "frames_processed": self.frames_processed,
            "frames_skipped": dict(self.frames_skipped),
            "frames_total": self.frames_total,
            "error": self.error,
            "notes": list(self.notes),
            "inputs": {
                k: {"received": c.received, "used": c.used, "skipped": dict(c.skipped)} for k, c in self.inputs.items()
            },
        }
