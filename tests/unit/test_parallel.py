"""The ordered thread-pool map, and its batches of small segments."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from secpack.package import parallel
from secpack.package.parallel import BATCH_BYTES, ordered_batched

KiB = 1 << 10


def _record(log: list[tuple[str, int]], i: int) -> int:
    log.append((threading.current_thread().name, i))
    return i


def _batches_of(sizes: list[int], max_jobs: int = 0) -> list[list[int]]:
    """How ordered_batched groups jobs of these sizes, as lists of job indices."""
    jobs = [(n, functools.partial(int, i)) for i, n in enumerate(sizes)]
    return [b() for b in parallel._batches(jobs, max_jobs)]


def test_results_come_back_in_order_and_each_job_runs_once() -> None:
    sizes = [3 * KiB, 2 * BATCH_BYTES, 1, 700 * KiB, 400 * KiB, BATCH_BYTES, 5, 5] * 25
    log: list[tuple[str, int]] = []
    jobs = [(n, functools.partial(_record, log, i)) for i, n in enumerate(sizes)]
    with ThreadPoolExecutor(3) as pool:
        assert list(ordered_batched(pool, jobs, 4)) == list(range(len(sizes)))
    assert sorted(i for _, i in log) == list(range(len(sizes)))


def test_small_jobs_share_a_batch_up_to_the_byte_limit() -> None:
    assert _batches_of([100 * KiB] * 25) == [
        list(range(10)),
        list(range(10, 20)),
        [20, 21, 22, 23, 24],
    ]
    # exactly the limit fits; one byte more starts the next batch
    assert _batches_of([512 * KiB, 512 * KiB, 1]) == [[0, 1], [2]]


def test_a_job_of_the_limit_or_more_runs_alone() -> None:
    assert _batches_of([10, BATCH_BYTES, 10, 3 * BATCH_BYTES, 10]) == [[0], [1], [2], [3], [4]]


def test_no_batch_holds_more_than_the_limit_or_one_job() -> None:
    import random

    rng = random.Random(7)
    sizes = [
        rng.choice([1, 4 * KiB, 300 * KiB, BATCH_BYTES - 1, 5 * BATCH_BYTES]) for _ in range(500)
    ]
    batches = _batches_of(sizes)
    assert [i for b in batches for i in b] == list(range(len(sizes)))
    for b in batches:
        assert len(b) == 1 or sum(sizes[i] for i in b) <= BATCH_BYTES


def test_max_jobs_caps_a_batch() -> None:
    assert _batches_of([1] * 7, max_jobs=3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_jobs_are_drawn_a_window_of_batches_ahead_not_all_at_once() -> None:
    drawn = 0

    def jobs() -> Iterator[tuple[int, Callable[[], int]]]:
        nonlocal drawn
        for i in range(10_000):
            drawn += 1
            yield 1, functools.partial(int, i)

    with ThreadPoolExecutor(2) as pool:
        results = ordered_batched(pool, jobs(), 3, max_jobs=10)
        assert next(results) == 0
        # 3 batches of 10 in flight, plus the one that replaced the first
        assert drawn <= 4 * 10 + 1
        results.close()
    assert drawn < 100


def test_an_error_in_a_batch_stops_the_map_and_cancels_the_rest() -> None:
    ran: list[int] = []

    def job(i: int) -> int:
        if i == 25:
            raise ValueError("segment 25")
        ran.append(i)
        return i

    jobs = [(1, functools.partial(job, i)) for i in range(1000)]
    seen = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="segment 25"):
        seen.extend(ordered_batched(pool, jobs, 2, max_jobs=10))
    assert seen == list(range(20))  # the batches before the failing one
    assert len(ran) < 100  # not every job ran: the rest were cancelled


def test_one_worker_runs_in_the_calling_thread_and_starts_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """InlineExecutor: results in order, an error kept for its result() as a pool
    keeps it, and no thread started: neither by it, nor by verify or the loader
    with one worker (a thread started out of memory can hang for ever)."""
    from pathlib import Path

    from helpers import build_model

    import secpack
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal
    from secpack.api.verify import verify
    from secpack.sign.policy import Policy, policy_from_keys

    keys = Path(__file__).resolve().parents[2] / "keys-example"
    root = Path(str(tmp_path))
    model = build_model(root / "m", scale=4096)
    pkg = root / "p.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        segment_size=1 << 20,
        sign_keys=[load_signing_key(str(keys / "signing-ed25519.key"))],
    )
    trusted = policy_from_keys([("k", (keys / "signing-ed25519.key.pub").read_bytes())]).keys

    def refuse(self: threading.Thread) -> None:
        raise AssertionError(f"a thread was started: {self.name}")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    log: list[tuple[str, int]] = []
    jobs = [(1, functools.partial(_record, log, i)) for i in range(5)]
    assert list(ordered_batched(parallel.InlineExecutor(), jobs, 2)) == list(range(5))
    assert {name for name, _ in log} == {threading.current_thread().name}
    failed = parallel.InlineExecutor().submit(int, "x")
    with pytest.raises(ValueError):
        failed.result()
    verify(str(pkg), Policy(keys=trusted, rollback=False), threads=1)
    with secpack.open_package(pkg, trust=[str(keys / "signing-ed25519.key.pub")], threads=1) as p:
        assert len(p.state_dict()) == len(p.tensor_names())
