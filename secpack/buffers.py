"""Memory for the hot paths: per-thread reusable buffers (segment reading,
decryption and the codecs) and huge-page-advised blocks.

A fresh multi-megabyte allocation per segment costs a page fault and a zeroing
for every page, which was a large share of decoding time; hence one buffer per
name and thread, reused from segment to segment. The first write to each fresh
4 KiB page still costs a fault, about 0.65 ms per MiB on the benchmark machine.
Memory advised ``MADV_HUGEPAGE`` is faulted 2 MiB at a time where the kernel's
transparent huge pages are in ``madvise`` or ``always`` mode, about five times
faster (0.11-0.13 ms per MiB), so blocks of at least 2 MiB get a mapping of
their own with that advice.
"""

from __future__ import annotations

import contextlib
import mmap
import threading

__all__ = ["HUGE", "huge_block", "in_use", "own_scratch", "scratch"]

# The smallest mapping that can hold a huge page (2 MiB on x86-64 and arm64).
HUGE = 2 << 20

_local = threading.local()


def huge_block(nbytes: int) -> mmap.mmap | None:
    """An anonymous, zero-filled mapping of ``nbytes`` (at least HUGE) advised to
    use huge pages, or None where that is not available (not Linux)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or nbytes < HUGE:
        return None
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    # Advice only: where huge pages are off this changes nothing.
    with contextlib.suppress(OSError):
        region.madvise(advice)
    return region


class own_scratch:  # lower case: used as a function, ``with own_scratch():``
    """Around one use of this thread's scratch buffers (a segment's decode). A use
    that begins while another is under way on the same thread (a signal handler
    that reads a package, run between two bytecodes of a read) gets buffers of its
    own for its duration, so that it cannot change the bytes the interrupted use
    is working on. A handler runs to its end before the code it interrupted goes
    on, so the two never run at once.

    A class, not a generator: an interrupt that lands as the block ends, before
    ``__exit__`` runs, then leaves the thread marked as in a use (every later use
    gets fresh buffers: slower, never wrong), where a generator's ``finally``
    would run whenever the generator is collected, in the middle of some later
    use, and unmark it there."""

    __slots__ = ("_depth", "_saved")

    def __enter__(self) -> None:
        state = _local.__dict__
        self._depth = state.get("depth", 0)
        self._saved = state.setdefault("buffers", {})  # the dict scratch() fills
        if self._depth:
            state["buffers"] = {}
        state["depth"] = self._depth + 1

    def __exit__(self, *exc: object) -> None:
        state = _local.__dict__
        state["buffers"] = self._saved
        state["depth"] = self._depth


def in_use() -> bool:
    """Whether this thread is in the middle of a use of its scratch buffers (a
    decode): a load started there now is nested in it."""
    return bool(_local.__dict__.get("depth", 0))


def scratch(name: str, size: int, at_least: int = 0) -> memoryview:
    """A writable buffer of exactly ``size`` bytes, private to this thread and to
    ``name`` (qualify names by module), valid until the next call with the same
    name on the same thread. A buffer that must grow grows to ``at_least`` when
    that is larger, so that a run of growing sizes allocates once."""
    cache: dict[str, bytearray | mmap.mmap] = _local.__dict__.setdefault("buffers", {})
    buf = cache.get(name)
    if buf is None or len(buf) < size:
        want = max(size, at_least, 1)
        buf = huge_block(want) or bytearray(want)
        cache[name] = buf
    return memoryview(buf)[:size]
