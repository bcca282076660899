"""Ordered, bounded parallel map over a thread pool.

zstandard, cryptography and hashlib release the GIL on large buffers, so
threads really use every core. Results come back in submission order and at
most ``window`` jobs are in flight, which bounds memory to a few segments per
worker whatever the model size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

__all__ = ["ordered"]

T = TypeVar("T")


def ordered(pool: Executor, jobs: Iterable[Callable[[], T]], window: int) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` and yield their results in order.

    On any error (or when the consumer stops early) the jobs not yet started are
    cancelled and the running ones are waited for, so no worker outlives the call.
    """
    pending: deque[Future[T]] = deque()
    it = iter(jobs)
    try:
        for job in it:
            pending.append(pool.submit(job))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for job in it:
                pending.append(pool.submit(job))
                break
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        for fut in pending:
            if not fut.cancelled():
                fut.exception()
