"""Pipelined decoding: a reader thread fills a bounded queue while the model runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], maxsize: int = 32) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``maxsize`` ahead of the consumer.

    An exception raised by ``items`` is re-raised here after the items before it (so a broken bag still
    yields what came before the break). Closing the returned generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, never lost in the thread
            put(_Failure(exc))
            return
        put(_END)

    thread = threading.Thread(target=work, name="pai-replay-reader", daemon=True)
    thread.start()
    try:
        while True:
            value = q.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.exc
            yield value
    finally:
        stop.set()
        thread.join(timeout=5.0)
