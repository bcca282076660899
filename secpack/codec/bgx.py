"""The ``bgx`` float codec (docs/FORMAT.md, "Codecs"): byte planes built around
the exponent.

``bg`` stores byte k of every element as plane k, so the exponent plane of fp32
also carries one mantissa bit, and bf16's carries none of the mantissa. ``bgx``
instead codes, per element, one byte H that holds the exponent's offset inside a
window of at most 31 common values together with the top 3 mantissa bits, which
are skewed and depend on the exponent (rarer exponents are escaped to a 16-bit
side plane X). The next mantissa bits and the sign go to plane L; fp32's last 13
mantissa bits to B1 and B0. Each plane is then compressed on its own.

Weight matrices whose columns differ in scale get per-column exponent offsets O
(period = the row length), which keep the exponents of every column inside the
window. The encoder decides from a sample of rows whether they pay.

The element transform is the C helper's (secpack.codec._planes); the numpy
decoder here gives the same bytes without it, more slowly, so a package sealed
anywhere opens everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from secpack.buffers import scratch
from secpack.codec import ans, zstd
from secpack.codec import planes as planes_mod
from secpack.errors import CodecError
from secpack.format.manifest import (
    BGX_FLOATS,
    Codec,
    Plane,
    bgx_p5_planes,
    bgx_plane_sizes,
    p5_size,
)

__all__ = ["decode", "encode"]


@dataclass(frozen=True)
class _Kind:
    code: int  # the C helper's kind number
    width: int  # bytes per element
    eb: int  # exponent bits
    mb: int  # mantissa bits


_KINDS = {
    "fp32": _Kind(0, 4, 8, 23),
    "bf16": _Kind(1, 2, 8, 7),
    "fp16": _Kind(2, 2, 5, 10),
}
assert set(_KINDS) == set(BGX_FLOATS)
_UINT: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}

# The window and the column offsets are chosen from samples of the segment by
# the C helper (bgx_analyze in _planes.c, where their constants are), without
# the GIL: as numpy code they held it for about a third of the encoder's time,
# and the seal's workers queued for it. tests/unit/test_bgx.py keeps that numpy
# code as the reference the C must agree with.


def available() -> bool:
    """Whether this build can encode bgx (the encoder needs the C helper)."""
    return planes_mod.native_module() is not None


# Planes of raw mantissa bits (L of fp32 and fp16, B1 of fp32): when their bytes'
# order-0 entropy is at least _NOISE_BITS, zstd's Huffman stage cannot take off
# more than (8 - _NOISE_BITS) / 8 of them, so they are stored raw without trying:
# compressing them only to store them raw was a third of the encoder's time.
# Weights upcast from bf16 (all-zero low mantissa) have entropy 0 and are tried.
_NOISY = {"fp32": (1, 2), "bf16": (), "fp16": (1,)}
_NOISE_BITS = 7.99
# A 5-bit plane (B0 of fp32, L of bf16) whose entropy is at least _P5_BITS is
# packed at exactly 5 bits per value ("p5"), which is faster than zstd to write
# and to read and at most 0.01 bit per value larger; below it zstd is tried and
# the smaller kept.
_P5_BITS = 4.99
_ENTROPY_SAMPLE = 1 << 16


def _store(
    native: ModuleType, src: memoryview | bytes, p5: bool, noisy: bool, exponents: bool = False
) -> tuple[Plane, bytes | bytearray | memoryview]:
    """The stored form of one plane: p5, zstd or raw, whichever this plane's
    statistics say is smallest (see _NOISE_BITS and _P5_BITS); for H
    (``exponents``), also ans, which codes it closer to its entropy than zstd's
    Huffman stage but cannot use repeats, so the smaller is kept."""
    # Entropy from at most _ENTROPY_SAMPLE evenly spaced bytes: its estimate is
    # low by about 0.003 bit for 256 equally likely values, well inside the margins.
    step = max(1, len(src) // _ENTROPY_SAMPLE)
    bits = native.entropy(src, step) if (p5 or noisy) else 0.0
    packed5: bytearray | None = None
    if p5:
        packed5 = bytearray(p5_size(len(src)))
        native.pack5(src, packed5)
        if bits >= _P5_BITS:
            return Plane("p5", len(packed5)), packed5
    if noisy and bits >= _NOISE_BITS:
        return Plane("raw", len(src)), src
    packed = zstd.compress_plane(src)
    if exponents:
        found = ans.encode(src, min(len(packed), len(src)))
        if found is not None:
            return Plane(found[0], len(found[1])), found[1]
    if packed5 is not None and len(packed5) <= len(packed) and len(packed5) < len(src):
        return Plane("p5", len(packed5)), packed5
    if len(packed) < len(src):
        return Plane("zstd", len(packed)), packed
    return Plane("raw", len(src)), src


def encode(view: memoryview, kind_name: str, period: int) -> tuple[Codec, bytes] | None:
    """The bgx form of one segment, or None when this build cannot encode it or it
    does not shrink the segment."""
    native = planes_mod.native_module()
    kind = _KINDS[kind_name]
    if native is None or len(view) % kind.width or not view:
        return None
    n = len(view) // kind.width
    lo, span, off_bytes = native.bgx_analyze(view, kind.code, period)
    p = len(off_bytes)
    wide = kind.width == 4
    h, low = scratch("bgx.H", n), scratch("bgx.L", n)
    empty = memoryview(bytearray())
    b1, b0 = (scratch("bgx.B1", n), scratch("bgx.B0", n)) if wide else (empty, empty)
    side = scratch("bgx.X", 2 * n)
    escapes = native.bgx_split(view, kind.code, lo, span, off_bytes, h, low, b1, b0, side)
    sources: list[memoryview | bytes] = [h, low]
    if wide:
        sources += [b1, b0]
    if escapes:
        sources.append(side[: 2 * escapes])
    planes: list[Plane] = []
    parts: list[bytes | bytearray | memoryview] = []
    p5_planes = bgx_p5_planes(kind_name)
    for k, src in enumerate(sources):
        plane, part = _store(
            native, src, k in p5_planes, noisy=k in _NOISY[kind_name], exponents=k == 0
        )
        planes.append(plane)
        parts.append(part)
    if p:
        planes.append(Plane("raw", p))
        parts.append(off_bytes)
    codec = Codec(
        "bgx", float=kind_name, lo=lo, span=span, escapes=escapes, period=p, planes=tuple(planes)
    )
    payload = b"".join(parts)
    if len(payload) >= len(view):
        return None
    return codec, payload


def decode(codec: Codec, payload: memoryview, out: memoryview, max_window: int) -> None:
    """Decode a bgx payload into ``out``. The schema has already tied every plane
    size to the record; the values are checked here (by the C helper, or below)."""
    kind = _KINDS[codec.float]
    sizes = bgx_plane_sizes(codec, len(out))
    planes: list[bytes | bytearray | memoryview] = []
    pos = 0
    for plane, size in zip(codec.planes, sizes, strict=True):
        chunk = payload[pos : pos + plane.size]
        pos += plane.size
        if plane.id == "raw":
            planes.append(chunk)
        elif plane.id == "p5":
            planes.append(_unpack5(chunk, size))
        elif plane.id in ("ans", "ans32"):
            planes.append(_ans_decode(chunk, size, plane.id == "ans32"))
        else:
            planes.append(zstd.decompress(chunk, size, max_window))
    wide = kind.width == 4
    h, low = planes[0], planes[1]
    b1, b0 = (planes[2], planes[3]) if wide else (b"", b"")
    rest = planes[4 if wide else 2 :]
    side = rest.pop(0) if codec.escapes else b""
    offsets = rest.pop(0) if codec.period else b""
    native = planes_mod.native_module()
    try:
        if native is not None:
            native.bgx_merge(h, low, b1, b0, side, offsets, out, kind.code, codec.lo, codec.span)
        else:
            _merge_numpy(kind, codec, h, low, b1, b0, side, offsets, out)
    except ValueError as exc:
        raise CodecError("codec.invalid", f"bgx: {exc}") from None


def _ans_decode(chunk: memoryview, count: int, wide: bool) -> memoryview:
    """The ``count`` symbols of an ans (``wide``: ans32) plane, in a per-thread buffer."""
    out = scratch("bgx.ans", count)
    try:
        ans.decode(chunk, out, wide)
    except ValueError as exc:
        raise CodecError("codec.invalid", f"bgx: {exc}") from None
    return out


def _unpack5(chunk: memoryview, count: int) -> memoryview:
    """The ``count`` values of a p5 plane (the schema has checked its size), in a
    per-thread buffer: a segment has at most one p5 plane."""
    out = scratch("bgx.p5", count)
    native = planes_mod.native_module()
    try:
        if native is not None:
            native.unpack5(chunk, out)
            return out
        bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8), bitorder="little")
        if bits[5 * count :].any():
            raise ValueError("p5 padding bits are not zero")
        weights = np.array([1, 2, 4, 8, 16], dtype=np.uint8)
        out[:] = (
            (bits[: 5 * count].reshape(count, 5) * weights).sum(axis=1).astype(np.uint8).tobytes()
        )
    except ValueError as exc:
        raise CodecError("codec.invalid", f"bgx: {exc}") from None
    return out


def _merge_numpy(
    kind: _Kind,
    codec: Codec,
    h_raw: Any,
    l_raw: Any,
    b1_raw: Any,
    b0_raw: Any,
    x_raw: Any,
    o_raw: Any,
    out: memoryview,
) -> None:
    """bgx_merge of the C helper, in numpy: the same checks, the same bytes."""
    nb = 1 << kind.eb
    lo, span = codec.lo, codec.span
    h = np.frombuffer(h_raw, dtype=np.uint8).astype(np.int64)
    lv = np.frombuffer(l_raw, dtype=np.uint8).astype(np.int64)
    n = len(h)
    try:
        if kind.code == 1 and n and int(lv.max()) >= 32:
            raise ValueError("L value out of range")
        offsets = np.frombuffer(o_raw, dtype=np.uint8).astype(np.int64)
        if len(offsets) and int(offsets.max()) >= nb:
            raise ValueError("column offset out of range")
        common = h < 8 * span
        escaped = np.flatnonzero(h == 255)
        if int((~common).sum()) != len(escaped):
            raise ValueError("H value out of range")
        side = np.frombuffer(x_raw, dtype="<u2").astype(np.int64)
        if len(side) != len(escaped):
            raise ValueError("escape count disagrees with the record")
        e = lo + (h >> 3)
        m3 = h & 7
        if len(side):
            xe = side >> 3
            if int(((xe >= nb) | ((xe >= lo) & (xe < lo + span))).sum()):
                raise ValueError("escaped exponent inside the window or out of range")
            e[escaped] = xe
            m3[escaped] = side & 7
        if len(offsets):
            e = (e + offsets[np.arange(n) % len(offsets)]) % nb
        sign = lv & 1
        if kind.width == 4:
            b1 = np.frombuffer(b1_raw, dtype=np.uint8).astype(np.int64)
            b0 = np.frombuffer(b0_raw, dtype=np.uint8).astype(np.int64)
            if n and int(b0.max()) >= 32:
                raise ValueError("B0 value out of range")
            m = (m3 << 20) | ((lv >> 1) << 13) | (b1 << 5) | b0
            v = (sign << 31) | (e << 23) | m
        else:
            m = (m3 << (kind.mb - 3)) | (lv >> 1)
            v = (sign << 15) | (e << kind.mb) | m
        np.frombuffer(out, dtype=_UINT[kind.width])[:] = v.astype(_UINT[kind.width])
    except ValueError:
        out[:] = bytes(len(out))
        raise
