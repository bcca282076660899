"""Per-thread reusable buffers for the hot paths (segment reading, decryption and
the codecs): one buffer per name and thread, reused from segment to segment.
A fresh multi-megabyte allocation per segment costs a page fault and a zeroing
for every page, which was a large share of decoding time."""

from __future__ import annotations

import threading

__all__ = ["scratch"]

_local = threading.local()


def scratch(name: str, size: int, at_least: int = 0) -> memoryview:
    """A writable buffer of exactly ``size`` bytes, private to this thread and to
    ``name`` (qualify names by module), valid until the next call with the same
    name on the same thread. A buffer that must grow grows to ``at_least`` when
    that is larger, so that a run of growing sizes allocates once."""
    cache: dict[str, bytearray] = _local.__dict__.setdefault("buffers", {})
    buf = cache.get(name)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, at_least, 1))
        cache[name] = buf
    return memoryview(buf)[:size]
