"""How many worker threads a pipeline runs when the user does not say: every CPU
this process may use, as far as a memory budget allows (smaller under a
container's memory limit).

Each worker holds a few segments at once (its input, the planes, the compressed
and the sealed forms, and its results waiting in the ordered window), so peak
memory grows with the workers. Measured on the 1 GiB benchmark model with 4 MiB
segments: seal peaks at 122 MB with 2 workers, 316 MB with 8 and 894 MB with 32;
open at 87 MB with 2 and 619 MB with 32. One worker per CPU alone would break the
512 MiB bound on a large machine.
"""

from __future__ import annotations

import numbers
import os

from secpack.cgroups import cpu_quota, memory_limit
from secpack.errors import InputError

__all__ = ["MAX_THREADS", "memory_budget", "usable_cpus", "worker_threads"]

# An explicit thread count above this is a mistake, not a machine: each worker
# holds several segments, so 10^9 of them would only exhaust memory.
MAX_THREADS = 1024

# Segments' worth of memory one seal worker holds at its peak, measured: 33 MB
# per worker at 4 MiB segments (484 MB with 13 workers), 90 MB at 16 MiB.
_SEGMENTS_PER_WORKER = 8
# What the workers together may hold. With the interpreter, numpy and the
# libraries (about 70 MB) this keeps seal and open under 512 MiB on any machine:
# 10 workers at 4 MiB segments, 2 at 16 MiB.
_BUDGET = 320 << 20
# What the zstd contexts the seal's workers keep (one per level, per thread)
# may come to, apart from the segments: level 19's (--level max) is 81 MiB by
# zstd's own estimate, so that max runs at most two workers on any machine (one
# under a container memory limit below about 670 MiB). Without it,
# max counted only its segments: with 4 MiB segments, 8 workers (an 8-CPU
# machine) peaked at 714 MB on khmer-ocr's 37 MB model.pth, and 2 at 227 MB;
# with 16 MiB segments 2 workers peak at 468-491 MB. Levels 1 and 3 keep about
# 1 MiB each, which this never limits.
_CONTEXT_BUDGET = 192 << 20
# Under a control group's memory limit, the workers get half of what is left
# after this much for the interpreter, numpy and the libraries (about 70 MB
# measured) and the main thread's own buffers; the other half stays for the page
# cache and the caller, since the limit counts both.
_BASELINE = 128 << 20


def usable_cpus() -> int:
    """CPUs this process may run on. ``os.cpu_count()`` counts the machine's, which
    is too many under ``taskset`` or a cpuset; the affinity mask is what is given,
    and a control group's CPU quota (``docker --cpus``, a Kubernetes CPU limit)
    lowers it further."""
    try:
        cpus = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
    quota = cpu_quota()
    return cpus if quota is None else min(cpus, quota)


def worker_threads(requested: int, segment_bytes: int, context_bytes: int = 0) -> int:
    """``requested`` when it is positive (the user's explicit choice, memory and
    all); otherwise one worker per usable CPU, at most as many as the budget allows
    for segments of ``segment_bytes`` and, apart, for coding contexts of
    ``context_bytes`` each, and at least one."""
    # An integer (numpy's too) and not a bool (True is 1 to Python; 2.5 or "4" would
    # fail deep in a pool).
    if (
        isinstance(requested, bool)
        or not isinstance(requested, numbers.Integral)
        or not 0 <= requested <= MAX_THREADS
    ):
        raise InputError(
            "input.invalid",
            f"threads (--threads) must be an integer from 0 (automatic) to {MAX_THREADS}, "
            f"not {requested!r}",
        )
    requested = int(requested)
    if requested > 0:
        return requested
    per_worker = _SEGMENTS_PER_WORKER * max(segment_bytes, 1)
    budget = memory_budget()
    count = min(usable_cpus(), budget // per_worker)
    if context_bytes > 0:
        # Under a container's limit the contexts' budget shrinks with the segments'.
        count = min(count, _CONTEXT_BUDGET * budget // _BUDGET // context_bytes)
    return max(1, count)


def memory_budget() -> int:
    """What the workers together may hold: _BUDGET, or less under a control
    group's memory limit (``docker --memory``, a Kubernetes memory limit)."""
    limit = memory_limit()
    if limit is None:
        return _BUDGET
    return max(0, min(_BUDGET, (limit - _BASELINE) // 2))
