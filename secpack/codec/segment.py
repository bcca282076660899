"""Segment codecs (docs/FORMAT.md, "Codecs").

Float weights barely compress as a byte stream: their exponent bytes are
skewed but interleaved with near-random mantissa bytes. ``bg`` (byte grouping)
first rotates every element left by one bit, so that the top byte of an fp32 or
bf16 element holds the exponent alone, then stores byte k of every element as
plane k and compresses each plane on its own. zstd's per-block Huffman tables
adapt to each plane; planes that do not shrink are stored raw.

Every encoder falls back to ``raw`` when coding would not make the segment
smaller, which lets the reader refuse any stored form larger than the raw one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from secpack.codec import zstd
from secpack.errors import CodecError
from secpack.format.manifest import Codec, Plane

__all__ = ["LEVELS", "decode", "encode"]

# zstd level for data that is not byte-grouped (integers, text, headers), per
# profile. Byte planes always use the tuned parameters of zstd.compress_plane.
LEVELS = {"fast": 1, "balanced": 3, "max": 19}

# Little-endian on every host: plane k is byte k of the element as stored on disk.
_UINT = {w: np.dtype(f"<u{w}") for w in (1, 2, 4, 8)}


@dataclass(frozen=True)
class Encoded:
    codec: Codec
    payload: bytes


# Elements per block when rotating: the block and its temporaries stay in the L2
# cache, and the temporaries are reused, so no multi-megabyte array is allocated
# (and page-faulted in) per segment.
_BLOCK = 1 << 15
_scratch_local = threading.local()


def _scratch(name: str, count: int, dtype: np.dtype[Any]) -> np.ndarray:
    """A per-thread reusable array of at least ``count`` elements."""
    cache: dict[str, np.ndarray] = _scratch_local.__dict__.setdefault("arrays", {})
    arr = cache.get(name)
    if arr is None or arr.dtype != dtype or arr.size < count:
        arr = np.empty(max(count, 1), dtype=dtype)
        cache[name] = arr
    return arr[:count]


def _split_planes(buf: bytes | memoryview, width: int, rotate: bool) -> np.ndarray:
    """Rotate each element left by one bit (optionally) and return its byte planes as
    rows of a (width, n) array. The array is per-thread scratch: use it before the
    next call on the same thread."""
    dtype = _UINT[width]
    x = np.frombuffer(buf, dtype=dtype)
    n = len(x)
    planes = _scratch("planes", width * n, np.dtype(np.uint8)).reshape(width, n)
    if not rotate:
        planes[:] = x.view(np.uint8).reshape(n, width).T
        return planes
    a = _scratch("rot_a", _BLOCK, dtype)
    b = _scratch("rot_b", _BLOCK, dtype)
    top = 8 * width - 1
    for start in range(0, n, _BLOCK):
        xb = x[start : start + _BLOCK]
        m = len(xb)
        np.left_shift(xb, 1, out=a[:m])
        np.right_shift(xb, top, out=b[:m])
        np.bitwise_or(a[:m], b[:m], out=a[:m])
        planes[:, start : start + m] = a[:m].view(np.uint8).reshape(m, width).T
    return planes


def _rotr1_inplace(x: np.ndarray, width: int) -> None:
    top = 8 * width - 1
    t = _scratch("unrot", _BLOCK, x.dtype)
    for start in range(0, len(x), _BLOCK):
        xb = x[start : start + _BLOCK]
        m = len(xb)
        np.left_shift(xb, top, out=t[:m])
        np.right_shift(xb, 1, out=xb)
        np.bitwise_or(xb, t[:m], out=xb)


def _is_constant(buf: memoryview, width: int) -> bool:
    n = len(buf) // width
    if n < 2:
        return False
    x = np.frombuffer(buf, dtype=_UINT[width])
    # Cheap probes first: most segments differ at one of these positions.
    if x[0] != x[-1] or x[0] != x[n // 2]:
        return False
    return bool(np.all(x == x[0]))


def encode(data: bytes | memoryview, width: int, grouped: bool, level: int) -> Encoded:
    """Pick and apply the smallest codec for one segment's plaintext.

    ``width`` is the element size (1 for opaque bytes); ``grouped`` asks for byte
    grouping, which is only worth trying for IEEE-style floats.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if n == 0:
        raise ValueError("empty segment")
    w = width if width in _UINT and n % width == 0 else 1
    if _is_constant(view, w):
        return Encoded(Codec("const", width=w), bytes(view[:w]))
    if grouped and w > 1:
        grid = _split_planes(view, w, rotate=True)
        planes: list[Plane] = []
        parts: list[bytes | memoryview] = []
        for k in range(w):
            plane = grid[k].data
            packed = zstd.compress_plane(plane)
            if len(packed) < len(plane):
                planes.append(Plane("zstd", len(packed)))
                parts.append(packed)
            else:
                planes.append(Plane("raw", len(plane)))
                parts.append(plane)
        if sum(p.size for p in planes) < n:
            return Encoded(Codec("bg", width=w, rot=1, planes=tuple(planes)), b"".join(parts))
    else:
        packed = zstd.compress(view, level)
        if len(packed) < n:
            return Encoded(Codec("zstd", size=len(packed)), packed)
    return Encoded(Codec("raw"), bytes(view))


def decode(codec: Codec, payload: bytes | memoryview, out: memoryview, max_window: int) -> None:
    """Decode ``payload`` into ``out``, which has exactly the segment's plaintext length.

    The manifest schema has already tied the payload length to the codec record,
    so every length used here is known to be consistent.
    """
    n = len(out)
    if len(payload) != codec.payload_len(n):
        raise CodecError("codec.invalid", "payload length disagrees with the codec record")
    if codec.id == "raw":
        out[:] = payload
    elif codec.id == "zstd":
        out[:] = zstd.decompress(payload, n, max_window)
    elif codec.id == "const":
        w = codec.width
        target = np.frombuffer(out, dtype=_UINT[w])
        target[:] = np.frombuffer(payload, dtype=_UINT[w])[0]
    elif codec.id == "bg":
        _decode_grouped(codec, payload, out, max_window)
    else:  # pragma: no cover - the schema refuses unknown codec ids
        raise CodecError("codec.invalid", f"unknown codec {codec.id!r}")


def _decode_grouped(
    codec: Codec, payload: bytes | memoryview, out: memoryview, max_window: int
) -> None:
    w = codec.width
    count = len(out) // w
    grid = np.frombuffer(out, dtype=np.uint8).reshape(count, w)
    pos = 0
    for k, plane in enumerate(codec.planes):
        chunk = payload[pos : pos + plane.size]
        pos += plane.size
        raw = chunk if plane.id == "raw" else zstd.decompress(chunk, count, max_window)
        grid[:, k] = np.frombuffer(raw, dtype=np.uint8)
    if codec.rot:
        _rotr1_inplace(np.frombuffer(out, dtype=_UINT[w]), w)
