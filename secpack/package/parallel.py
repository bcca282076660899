"""Ordered, bounded parallel map over a thread pool.

zstandard, cryptography and hashlib release the GIL on large buffers, so
threads really use every core. Results come back in submission order and at
most ``window`` jobs are in flight, which bounds memory to a few segments per
worker whatever the model size.

Small segments are handed out in batches (``ordered_batched``): a job of its
own per segment cost more, in the pool's hand-offs and in the threads' turns
at the GIL, than the segment's own work.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["BATCH_BYTES", "InlineExecutor", "ordered", "ordered_batched", "worker_pool"]

T = TypeVar("T")
P = ParamSpec("P")

# Segments are batched up to this many plaintext bytes per job. Measured on 2,000
# tensors of 1.5 KB, with other processes busy on the machine: loading them took
# 0.39 s with a job per segment and 0.19 s in batches (one worker thread); each
# hand-off then waits for the scheduler. On an idle machine the two were within
# noise. A segment of 1 MiB or more is a job of its own, as before, so the
# segments of large tensors still keep every worker busy.
BATCH_BYTES = 1 << 20


class InlineExecutor(Executor):
    """An executor for one worker: each job runs in the caller's thread as it is
    submitted, its result or error kept in the future as a pool would keep it.
    No thread is started. Starting one can fail when memory runs out, and one
    whose start dies inside the interpreter, out of memory, leaves
    ``Thread.start`` waiting for ever (CPython gh-140746)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # as a worker thread would; BaseException goes on up
            future.set_exception(exc)
        return future


def worker_pool(threads: int, name: str) -> Executor:
    """``threads`` workers; one works in the caller's thread (InlineExecutor), as
    the caller would only wait for it."""
    if threads == 1:
        return InlineExecutor()
    return ThreadPoolExecutor(threads, thread_name_prefix=name)


def ordered(pool: Executor, jobs: Iterable[Callable[[], T]], window: int) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` and yield their results in order.

    On any error (or when the consumer stops early) the jobs not yet started are
    cancelled and the running ones are waited for, so no worker outlives the call.
    """
    pending: deque[Future[T]] = deque()
    it = iter(jobs)
    # The pool's threads belong to this process. A generator suspended across a
    # fork (iter_tensors taken up again in the child) would wait for ever on jobs
    # that no thread of the child runs.
    owner = os.getpid()
    try:
        for job in it:
            pending.append(pool.submit(job))
            if len(pending) >= window:
                break
        while pending:
            if os.getpid() != owner:
                raise ValueError(
                    "this iteration began before a fork, in another process: "
                    "start a new one in this process"
                )
            result = pending.popleft().result()
            for job in it:
                pending.append(pool.submit(job))
                break
            yield result
    finally:
        if os.getpid() == owner:  # a child has nothing of the parent's pool to wait for
            for fut in pending:
                fut.cancel()
            for fut in pending:
                if not fut.cancelled():
                    fut.exception()


def ordered_batched(
    pool: Executor,
    jobs: Iterable[tuple[int, Callable[[], T]]],
    window: int,
    max_jobs: int = 0,
) -> Iterator[T]:
    """``ordered`` for ``(bytes, job)`` pairs: consecutive jobs run as one, up to
    BATCH_BYTES (and ``max_jobs``, when given) between them; a job of BATCH_BYTES
    or more runs alone. A batch so never holds more than BATCH_BYTES, or one
    job's bytes, and the window's memory bound stays what it was. ``jobs`` is
    drawn lazily, a batch at a time."""
    return (
        result for results in ordered(pool, _batches(jobs, max_jobs), window) for result in results
    )


def _batches(
    jobs: Iterable[tuple[int, Callable[[], T]]], max_jobs: int
) -> Iterator[Callable[[], list[T]]]:
    batch: list[Callable[[], T]] = []
    total = 0
    for size, job in jobs:
        if batch and (total + size > BATCH_BYTES or len(batch) == max_jobs):
            yield functools.partial(_run, batch)
            batch, total = [], 0
        batch.append(job)
        total += size
    if batch:
        yield functools.partial(_run, batch)


def _run(batch: list[Callable[[], T]]) -> list[T]:
    return [job() for job in batch]
