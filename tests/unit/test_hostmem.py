"""Host buffers for decoded tensors: aligned, writable, exactly sized, kept alive
by their arrays, and (state_dict's arena) never overlapping."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from secpack import buffers
from secpack.api import hostmem
from secpack.errors import SecpackError


@pytest.mark.parametrize("size", [0, 1, 63, 4096, (2 << 20) - 1, 2 << 20, (5 << 20) + 3])
def test_host_buffers_are_aligned_writable_and_exact(size: int) -> None:
    buf = hostmem.host_buffer(size)
    assert buf.dtype == np.uint8 and buf.nbytes == size
    assert buf.flags.writeable and buf.flags.c_contiguous
    assert size == 0 or buf.ctypes.data % hostmem.ALIGNMENT == 0
    buf[:] = 7
    assert int(buf.sum()) == 7 * size


def test_a_large_buffer_outlives_every_other_reference() -> None:
    view = hostmem.host_buffer(3 << 20)[100:200]
    gc.collect()
    view[:] = 1  # the mapping behind it is still there
    assert view.tolist() == [1] * 100


def test_arena_buffers_are_aligned_and_disjoint() -> None:
    sizes = [0, 5, 64, 65, 1000, 3 << 20, 7]
    parts = hostmem.arena(sizes)
    assert [p.nbytes for p in parts] == sizes
    for k, part in enumerate(parts):
        assert part.nbytes == 0 or part.ctypes.data % hostmem.ALIGNMENT == 0
        part[:] = k + 1
    for k, part in enumerate(parts):
        assert (part == k + 1).all()  # no later part wrote over this one


def test_scratch_buffers_are_per_name_and_reused() -> None:
    a = buffers.scratch("test.a", 3 << 20)
    a[:4] = b"abcd"
    again = buffers.scratch("test.a", 10)
    assert bytes(again[:4]) == b"abcd"  # the same memory, not a new allocation
    other = buffers.scratch("test.b", 10)
    other[:4] = b"wxyz"
    assert bytes(buffers.scratch("test.a", 4)) == b"abcd"


def test_a_buffer_the_host_cannot_provide_is_a_typed_refusal() -> None:
    # A signed manifest may declare any size; 2^62 bytes is past every host.
    with pytest.raises(SecpackError) as err:
        hostmem.host_buffer(1 << 62)
    assert err.value.code == "limit.exceeded"
    with pytest.raises(SecpackError) as err:
        hostmem.arena([1 << 61, 1 << 61])
    assert err.value.code == "limit.exceeded"
