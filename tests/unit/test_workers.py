"""Worker-thread counts: every usable CPU, as far as the memory budget allows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from secpack import workers
from secpack.errors import SecpackError

MiB = 1 << 20


def test_an_explicit_count_is_kept() -> None:
    import numpy as np

    assert workers.worker_threads(1, 16 * MiB) == 1
    assert workers.worker_threads(np.int64(3), MiB) == 3  # type: ignore[arg-type]
    assert workers.worker_threads(48, 16 * MiB) == 48
    assert workers.worker_threads(workers.MAX_THREADS, MiB) == workers.MAX_THREADS


@pytest.mark.parametrize("count", [-1, workers.MAX_THREADS + 1, 10**20, 2.5, True, "4", None])
def test_a_count_out_of_range_or_not_an_int_is_refused(count: object) -> None:
    with pytest.raises(SecpackError) as err:
        workers.worker_threads(count, MiB)  # type: ignore[arg-type]
    assert err.value.code == "input.invalid"


@pytest.mark.parametrize(
    ("cpus", "segment", "expected"),
    [
        (2, 4 * MiB, 2),  # this kind of machine: one per CPU
        (64, 4 * MiB, 10),  # 320 MiB / (8 x 4 MiB)
        (64, 16 * MiB, 2),  # the largest segments
        (64, 1 * MiB, 40),
        (64, 0, 64),  # an empty package: nothing to hold
        (1, 16 * MiB, 1),
    ],
)
def test_the_default_is_capped_by_the_memory_budget(
    monkeypatch: pytest.MonkeyPatch, cpus: int, segment: int, expected: int
) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    assert workers.worker_threads(0, segment) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_usable_cpus_follows_the_affinity_mask() -> None:
    """Under taskset (or a cpuset) only the allowed CPUs count."""
    code = (
        "import os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from secpack.workers import usable_cpus\n"
        "print(usable_cpus(), os.cpu_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    usable, total = map(int, out.stdout.split())
    assert usable == 1 and total >= 1
