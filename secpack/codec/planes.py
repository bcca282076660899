"""Byte planes: element bytes to planes and back, with the ``bg`` codec's rotation.

``split`` rotates every little-endian element left by one bit (when asked) and
writes byte k of every element to plane k; ``merge`` is its exact inverse. The
work is done by the small C helper ``secpack.codec._planes`` where it was built
(a regular install builds it), and otherwise by numpy, which gives identical
bytes several times more slowly. ``NATIVE`` says which one runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from secpack.buffers import scratch

__all__ = ["NATIVE", "merge", "native_module", "split"]

_native: ModuleType | None
try:
    from secpack.codec import _planes as _native
except ImportError:  # built without a C compiler: the numpy path below
    _native = None

NATIVE = _native is not None


def native_module() -> ModuleType | None:
    """The C helper, or None where it was not built (tests switch it off here)."""
    return _native


# Little-endian on every host: plane k is byte k of the element as stored on disk.
_UINT = {w: np.dtype(f"<u{w}") for w in (2, 4, 8)}

# Elements per block for the numpy path: the block and its temporaries stay in the
# L2 cache and are reused, so no multi-megabyte temporary is allocated per call.
_BLOCK = 1 << 15


def _scratch(name: str, count: int, dtype: np.dtype[Any]) -> np.ndarray:
    return np.frombuffer(scratch(f"planes.{name}", count * dtype.itemsize), dtype=dtype)


def _check(width: int, size: int) -> int:
    if width not in _UINT:
        raise ValueError("width must be 2, 4 or 8")
    if size % width:
        raise ValueError("buffer size is not a multiple of the width")
    return size // width


def split(src: bytes | memoryview, dst: memoryview, width: int, rotate: bool) -> None:
    """Write the planes of ``src`` to ``dst`` (same length): plane k of the n
    elements is ``dst[k*n:(k+1)*n]``."""
    n = _check(width, len(src))
    if len(dst) != len(src):
        raise ValueError("buffer sizes disagree")
    if _native is not None:
        _native.split(src, dst, width, rotate)
        return
    x = np.frombuffer(src, dtype=_UINT[width])
    planes = np.frombuffer(dst, dtype=np.uint8).reshape(width, n)
    if not rotate:
        planes[:] = x.view(np.uint8).reshape(n, width).T
        return
    a = _scratch("a", _BLOCK, _UINT[width])
    b = _scratch("b", _BLOCK, _UINT[width])
    top = 8 * width - 1
    for start in range(0, n, _BLOCK):
        xb = x[start : start + _BLOCK]
        m = len(xb)
        np.left_shift(xb, 1, out=a[:m])
        np.right_shift(xb, top, out=b[:m])
        np.bitwise_or(a[:m], b[:m], out=a[:m])
        planes[:, start : start + m] = a[:m].view(np.uint8).reshape(m, width).T


def merge(planes: Sequence[bytes | memoryview], dst: memoryview, width: int, rotate: bool) -> None:
    """Interleave ``width`` planes of n bytes each into ``dst`` (n * width bytes),
    undoing the rotation when asked."""
    n = _check(width, len(dst))
    if len(planes) != width or any(len(p) != n for p in planes):
        raise ValueError("plane count or size disagrees with the output")
    if _native is not None:
        _native.merge(planes, dst, width, rotate)
        return
    grid = np.frombuffer(dst, dtype=np.uint8).reshape(n, width)
    for k, plane in enumerate(planes):
        grid[:, k] = np.frombuffer(plane, dtype=np.uint8)
    if not rotate:
        return
    x = np.frombuffer(dst, dtype=_UINT[width])
    t = _scratch("t", _BLOCK, _UINT[width])
    top = 8 * width - 1
    for start in range(0, n, _BLOCK):
        xb = x[start : start + _BLOCK]
        m = len(xb)
        np.left_shift(xb, top, out=t[:m])
        np.right_shift(xb, 1, out=xb)
        np.bitwise_or(xb, t[:m], out=xb)
