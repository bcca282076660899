"""Host memory for decoded tensors: aligned, and in huge-page-advised mappings
from 2 MiB up, whose first touch costs about a fifth of 4 KiB page faults (see
secpack.buffers). Smaller buffers cannot hold a huge page and come from numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from secpack.buffers import huge_block
from secpack.errors import LimitError

__all__ = ["ALIGNMENT", "aligned", "arena", "filled_bytes", "host_buffer"]

# Arrays start on a 64-byte boundary: cache-line and AVX-512 aligned, as torch
# and numpy kernels prefer.
ALIGNMENT = 64


def aligned(nbytes: int) -> np.ndarray:
    """``nbytes`` of uint8 from numpy, starting on an ALIGNMENT boundary."""
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    # The address from the array interface: ``raw.ctypes`` builds a ctypes object
    # each time, a visible cost across a model's many small tensors.
    address: int = raw.__array_interface__["data"][0]
    shift = (-address) % ALIGNMENT
    return raw[shift : shift + nbytes]


def host_buffer(nbytes: int) -> np.ndarray:
    """A writable, ALIGNMENT-aligned uint8 buffer of ``nbytes`` (contents undefined).

    ``limit.exceeded`` when the host cannot provide it: the size comes from a signed
    manifest, but a signer (or a small package of constant segments) can ask for
    more memory than there is, and that must be a typed refusal."""
    try:
        region = huge_block(nbytes)
        if region is None:
            return aligned(nbytes)
    except MemoryError:
        raise LimitError(
            "limit.exceeded", f"cannot allocate {nbytes} bytes for decoded tensors"
        ) from None
    # The array holds the mapping (page-aligned); it is unmapped with the last view.
    return np.frombuffer(region, dtype=np.uint8, count=nbytes)


def arena(sizes: Sequence[int]) -> list[np.ndarray]:
    """One buffer per size, all carved from one block (each ALIGNMENT-aligned):
    many small tensors then share huge pages too. The block is freed when the last
    of the buffers is."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // ALIGNMENT) * ALIGNMENT
    block = host_buffer(max(total, 1))
    return [block[o : o + s] for o, s in zip(offsets, sizes, strict=True)]


def filled_bytes(nbytes: int, fill: Callable[[np.ndarray], None]) -> bytes:
    """A bytes object of ``nbytes`` that ``fill`` writes, every byte, through the
    uint8 array it is given (and keeps no view of). With the C helper
    (secpack/_bytesbuf.c) the array is the bytes object's own memory, so the data
    is held once; without it, a host buffer copied into the bytes at the end.
    ``limit.exceeded`` as for host_buffer."""
    try:
        from secpack._bytesbuf import BytesBuffer
    except ImportError:  # built without a C compiler
        buffer = host_buffer(nbytes)
        fill(buffer)
        return buffer.tobytes()
    try:
        target = BytesBuffer(nbytes)
    except MemoryError:
        raise LimitError(
            "limit.exceeded",
            f"cannot allocate {nbytes} bytes to hold a whole file (secpack open, or "
            "secpack.api.extract, writes the original files a few segments at a time)",
        ) from None
    view = np.frombuffer(memoryview(target), dtype=np.uint8)
    try:
        fill(view)
    finally:
        del view
    try:
        return target.take()
    except BufferError:
        # ``fill`` kept a view after all: then a copy, so that no one can change
        # bytes that are handed out.
        return bytes(memoryview(target))
