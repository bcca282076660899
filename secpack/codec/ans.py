"""``ans`` planes: a static order-0 rANS coder for the H plane of bgx, and for
whole segments of one-byte numbers (fp8, int8) as the ``ans`` codec
(docs/FORMAT.md, "ans planes").

zstd codes a plane of high-entropy symbols with Huffman codes, whose lengths are
whole bits: on the exponent planes of real weights that is 0.5-1 % above the
order-0 entropy. rANS codes at the entropy to within the 12-bit rounding of its
frequencies: on the benchmark models that took 0.0010-0.0021 off the package's
size ratio, at about 3.6 ns per symbol to decode against zstd's 1 (see
bench/stages.py).

A plane is its frequency table, four 32-bit coder states and one byte stream.
The coding loops are in the C helper; this module builds, writes and parses the
table, and holds a plain-Python decoder for builds without the helper (about a
microsecond per symbol: correct, and far slower).

Why not a library: python-zstandard exposes no entropy stage on its own, and
the ANS libraries on PyPI define their streams by their own code (constriction,
for one, quantizes float probabilities its own way), which a binding format
spec cannot point to.
"""

from __future__ import annotations

import numpy as np

from secpack.buffers import scratch
from secpack.codec import planes as planes_mod
from secpack.format.manifest import ANS_MIN_SIZE

__all__ = [
    "BITS",
    "code",
    "decode",
    "decode_python",
    "encode",
    "parse_table",
    "quantize",
    "quantize_python",
]

# Frequencies are out of 2^12: within 0.0001 of the order-0 entropy on weight
# planes (14 bits gained 0.00001 more), and the decoder's slot table stays at
# 16 KB, inside the L1 cache.
BITS = 12
_M = 1 << BITS
# The state bound of byte-wise rANS: a multiple of _M, with 256 * _L < 2^32.
_L = 1 << 23
_LANES = 4
_BITMAP = 32  # one bit per byte value
# Planes shorter than this stay with zstd: the table (up to about 500 bytes)
# would outweigh what rANS saves on a few thousand symbols.
_MIN_SYMBOLS = 4096


def quantize(counts: np.ndarray) -> np.ndarray:
    """Frequencies out of 2^12 for symbol ``counts`` (256 of them, not all zero):
    every symbol that occurs gets at least 1, and the rounding is settled where it
    costs fewest bits. The C helper's ``ans_quantize`` where it was built: it runs
    without the GIL (this loop held it for up to a few hundred numpy calls per
    plane); ``quantize_python`` otherwise, which gives the same frequencies."""
    native = planes_mod.native_module()
    if native is None:
        return quantize_python(counts)
    coded = native.ans_quantize(np.ascontiguousarray(counts, dtype=np.uint64))
    return np.frombuffer(coded, dtype="<u2").astype(np.int64)


def quantize_python(counts: np.ndarray) -> np.ndarray:
    """``quantize`` in numpy: the C helper's twin."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    present = counts > 0
    q = np.where(present, np.maximum(1, (counts * _M + total // 2) // total), 0)
    diff = _M - int(q.sum())
    c = counts.astype(np.float64)
    while diff:
        if diff > 0:  # give one more to the symbol that gains most from it
            qf = np.where(present, q, 1).astype(np.float64)
            gain = np.where(present, c * np.log2((qf + 1) / qf), -1.0)
            q[int(np.argmax(gain))] += 1
            diff -= 1
        else:  # take one from the symbol (with more than 1) that loses least
            qf = np.where(q > 1, q, 2).astype(np.float64)
            loss = np.where(q > 1, c * np.log2(qf / (qf - 1)), np.inf)
            q[int(np.argmin(loss))] -= 1
            diff += 1
    return q


def _table_bytes(q: np.ndarray) -> bytes:
    """The bitmap of the symbols present, then each one's frequency as LEB128."""
    present = q > 0
    bitmap = np.packbits(present.astype(np.uint8), bitorder="little").tobytes()
    out = bytearray(bitmap)
    for f in q[present].tolist():
        out += bytes((f,)) if f < 128 else bytes(((f & 127) | 128, f >> 7))
    return bytes(out)


def _bits(counts: np.ndarray, q: np.ndarray) -> float:
    """Bits the stream needs for ``counts`` under frequencies ``q``, give or take
    what the final states hold (at most 4 x 31 bits)."""
    present = counts > 0
    return float((counts[present] * (BITS - np.log2(q[present]))).sum())


def _code_into(q: np.ndarray, plane: memoryview | bytes, room: int) -> bytes | None:
    """The plane for table ``q`` when it fits in ``room`` bytes, else None."""
    native = planes_mod.native_module()
    assert native is not None
    table = _table_bytes(q)
    space = room - len(table)
    if space < 4 * _LANES:
        return None
    out = scratch("ans.out", space)
    start = native.ans_encode(q.astype("<u2").tobytes(), plane, out)
    return None if start < 0 else table + bytes(out[start:])


def _counts(plane: memoryview | bytes) -> np.ndarray:
    native = planes_mod.native_module()
    assert native is not None
    counts = np.zeros(256, dtype=np.uint64)
    native.histogram(plane, counts)
    return counts


def encode(plane: memoryview | bytes, limit: int) -> bytes | None:
    """The ans form of ``plane`` when it is shorter than ``limit`` bytes, else None."""
    if planes_mod.native_module() is None or len(plane) < _MIN_SYMBOLS:
        return None
    counts = _counts(plane)
    q = quantize(counts)
    # Only a clear loser skips the real encoding: the states can hold up to 16 of
    # the estimated stream bytes, and the table is at least the bitmap.
    if _BITMAP + int(_bits(counts, q) / 8) >= limit:
        return None
    return _code_into(q, plane, limit - 1)  # strictly shorter than limit


def code(plane: memoryview | bytes) -> bytes:
    """The ans form of any non-empty ``plane``, with no size limit or minimum (for
    tests and fuzzing: the writer goes through ``encode``). Needs the C helper."""
    coded = _code_into(quantize(_counts(plane)), plane, 4 * len(plane) + 600)
    assert coded is not None  # 4 bytes per symbol and the largest table always fit
    return coded


def parse_table(chunk: memoryview) -> tuple[bytes, int]:
    """The 256 frequencies of an ans plane (as little-endian uint16) and where its
    states start. ValueError unless the table is well formed: a frequency for
    exactly the symbols in the bitmap, each 1..4096 in minimal LEB128, summing to
    4096, and room for the states after it."""
    if len(chunk) < ANS_MIN_SIZE:
        raise ValueError("ans plane shorter than its table and states")
    present = np.unpackbits(np.frombuffer(chunk[:_BITMAP], dtype=np.uint8), bitorder="little")
    symbols = np.flatnonzero(present).tolist()
    if not symbols:
        raise ValueError("ans table has no symbol")
    freqs = [0] * 256
    data = bytes(chunk[_BITMAP : _BITMAP + 2 * len(symbols)])
    at = 0
    for s in symbols:
        if at >= len(data):
            raise ValueError("ans table ends early")
        b0 = data[at]
        if b0 < 128:
            f, at = b0, at + 1
        else:
            if at + 1 >= len(data):
                raise ValueError("ans table ends early")
            b1 = data[at + 1]
            if b1 == 0 or b1 >= 128:
                raise ValueError("ans frequency is not minimal two-byte LEB128")
            f, at = (b0 & 127) | (b1 << 7), at + 2
        if not 1 <= f <= _M:
            raise ValueError("ans frequency out of range")
        freqs[s] = f
    if sum(freqs) != _M:
        raise ValueError("ans frequencies do not sum to 4096")
    states = _BITMAP + at
    if len(chunk) - states < 4 * _LANES:
        raise ValueError("ans plane shorter than its table and states")
    return np.array(freqs, dtype="<u2").tobytes(), states


def decode(chunk: memoryview, out: memoryview) -> None:
    """Decode an ans plane into ``out`` (exactly its symbols). ValueError, with
    ``out`` zeroed, for any plane ``encode`` cannot have written."""
    try:
        freqs, pos = parse_table(chunk)
    except ValueError:
        out[:] = bytes(len(out))
        raise
    native = planes_mod.native_module()
    if native is not None:
        native.ans_decode(freqs, chunk[pos:], out)
    else:
        decode_python(freqs, chunk[pos:], out)


def decode_python(freqs: bytes, stream: memoryview, out: memoryview) -> None:
    """The decoder of the spec, one symbol at a time (the C helper's twin)."""
    f = np.frombuffer(freqs, dtype="<u2").astype(np.int64).tolist()
    start = [0] * 256
    total = 0
    for s in range(256):
        start[s] = total
        total += f[s]
    if total != _M:
        out[:] = bytes(len(out))
        raise ValueError("frequencies do not sum to 4096")
    slot_symbol = bytearray(_M)
    for s in range(256):
        slot_symbol[start[s] : start[s] + f[s]] = bytes((s,)) * f[s]
    data = bytes(stream)
    if len(data) < 4 * _LANES:
        out[:] = bytes(len(out))
        raise ValueError("ans plane shorter than its states")
    x = [int.from_bytes(data[4 * k : 4 * k + 4], "little") for k in range(_LANES)]
    problem = None
    if any(not _L <= v < _L << 8 for v in x):
        problem = "ans state out of range"
    pos, end = 4 * _LANES, len(data)
    result = bytearray(len(out))
    i = 0
    mask = _M - 1
    while problem is None and i < len(out):
        k = i & (_LANES - 1)
        v = x[k]
        s = slot_symbol[v & mask]
        result[i] = s
        v = f[s] * (v >> BITS) + (v & mask) - start[s]
        while v < _L:
            if pos == end:
                problem = "ans stream ends early"
                break
            v = (v << 8) | data[pos]
            pos += 1
        x[k] = v
        i += 1
    if problem is None and pos != end:
        problem = "ans stream has bytes left over"
    if problem is None and any(v != _L for v in x):
        problem = "ans final state is not the initial one"
    if problem is not None:
        out[:] = bytes(len(out))
        raise ValueError(problem)
    out[:] = result
