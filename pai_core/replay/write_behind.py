"""Sinks written from a thread of their own: the model steps the next batch while the sinks render, encode
and write the last one (overlays, H.264, JPEG, Parquet, MCAP), which took the model's time before.

Calls reach every sink in the order the runner made them, so a sink sees exactly what it saw when the
runner called it directly. The first exception a sink raises is re-raised in the runner at its next call
(or at ``finish``); the calls after it are dropped.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

_END = object()


class WriteBehind:
    """Runs sink calls in a background thread, at most ``depth`` calls behind the runner.

    The thread runs under the caller's grad and inference mode (both are per thread in torch), so a sink
    computes as it would in the runner's thread.
    """

    def __init__(self, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        torch = sys.modules.get("torch")  # only when the run uses torch at all
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) if torch is not None else None
        self.thread = threading.Thread(target=self._work, args=(modes,), name="pai-sink-writer", daemon=True)
        self.thread.start()

    def _work(self, modes: tuple[bool, bool] | None) -> None:
        if modes is None:
            self._drain()
            return
        import torch

        with torch.set_grad_enabled(modes[0]), torch.inference_mode(modes[1]):
            self._drain()

    def _drain(self) -> None:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if self.error is not None:
                continue  # a sink failed: the runner stops at its next call
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # handed to the runner, never lost in the thread
                self.error = exc

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises a sink's earlier exception instead."""
        self._raise()
        self.queue.put((fn, args))

    def finish(self) -> None:
        """Wait for every queued call; raises a sink's exception."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        """End the thread after the queued calls (also after an error elsewhere)."""
        if self.thread.is_alive():
            self.queue.put(_END)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def write_all(sinks: Sequence[Any], frames: Sequence[Any]) -> None:
    """``write`` on every sink, in order."""
    for sink in sinks:
        sink.write(frames)
