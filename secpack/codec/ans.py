"""``ans`` and ``ans32`` planes: a static order-0 rANS coder for the H plane of
bgx, and for whole segments of one-byte numbers (fp8, int8) as the ``ans`` and
``ans32`` codecs (docs/FORMAT.md, "ans planes" and "ans32 planes").

zstd codes a plane of high-entropy symbols with Huffman codes, whose lengths are
whole bits: on the exponent planes of real weights that is 0.5-1 % above the
order-0 entropy. rANS codes at the entropy to within the 12-bit rounding of its
frequencies: on the benchmark models that took 0.0010-0.0021 off the package's
size ratio. It decodes at 0.73 ns per symbol with AVX2 (ans32, below), 1.7-1.8
without, against zstd's 0.5 on the same plane (see bench/stages.py).

An ``ans`` plane is its frequency table, four 32-bit coder states and one byte
stream. An ``ans32`` plane has the same table, 32 states and a stream of 16-bit
words: its states do not wait on each other, so it decodes 2.4x faster with
AVX2 (0.73 against 1.8 ns per symbol here), and its 112 more bytes of states are
nothing on the large planes the writer uses it for. The coding loops are in the
C helper; this module builds, writes and parses the
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
from secpack.format.manifest import ANS32_MIN_SIZE, ANS_MIN_SIZE

__all__ = [
    "BITS",
    "WIDE_MIN_SYMBOLS",
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
# ans32: 32 states, each in [2^16, 2^32), renormalised by 16-bit words.
_LANES32 = 32
_L32 = 1 << 16
# The writer codes planes of this many symbols and more as ans32: its 112 more
# bytes of states are then at most about 0.15 % of the coded plane (80 KB at 5
# bits a symbol), and under 0.02 % on the 1-4 Mi-symbol planes of 4 MiB
# segments, where the faster decoding counts. At 2^16 a rank-16 fp16 LoRA
# adapter (448 tensors of 65,536 elements) came out 37 KB (0.08 %) larger, for
# a decode 0.07 ms a tensor quicker.
WIDE_MIN_SYMBOLS = 1 << 17


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


def _code_into(q: np.ndarray, plane: memoryview | bytes, room: int, wide: bool) -> bytes | None:
    """The plane (ans32 when ``wide``) for table ``q`` when it fits in ``room``
    bytes, else None."""
    native = planes_mod.native_module()
    assert native is not None
    table = _table_bytes(q)
    space = room - len(table)
    if space < 4 * (_LANES32 if wide else _LANES):
        return None
    # The ans32 coder checks its room once per 32 symbols, so it may stop up to
    # 64 bytes before a plane that would just fit: it gets that much more, and
    # what it writes is held to ``space`` here.
    slack = 2 * _LANES32 if wide else 0
    out = scratch("ans.out", space + slack)
    coder = native.ans32_encode if wide else native.ans_encode
    start = coder(q.astype("<u2").tobytes(), plane, out)
    if start < 0 or len(out) - start > space:
        return None
    return table + bytes(out[start:])


def _counts(plane: memoryview | bytes) -> np.ndarray:
    native = planes_mod.native_module()
    assert native is not None
    counts = np.zeros(256, dtype=np.uint64)
    native.histogram(plane, counts)
    return counts


def encode(plane: memoryview | bytes, limit: int) -> tuple[str, bytes] | None:
    """``("ans32", plane)`` from WIDE_MIN_SYMBOLS symbols up, else ``("ans",
    plane)``, when the coded plane is shorter than ``limit`` bytes; else None."""
    if planes_mod.native_module() is None or len(plane) < _MIN_SYMBOLS:
        return None
    counts = _counts(plane)
    q = quantize(counts)
    # Only a clear loser skips the real encoding: the states can hold some of the
    # estimated stream bytes, and the table is at least the bitmap.
    if _BITMAP + int(_bits(counts, q) / 8) >= limit:
        return None
    wide = len(plane) >= WIDE_MIN_SYMBOLS
    coded = _code_into(q, plane, limit - 1, wide)  # strictly shorter than limit
    return None if coded is None else ("ans32" if wide else "ans", coded)


def code(plane: memoryview | bytes, wide: bool = False) -> bytes:
    """The ans (or, when ``wide``, ans32) form of any non-empty ``plane``, with no
    size limit or minimum (for tests and fuzzing: the writer goes through
    ``encode``). Needs the C helper."""
    coded = _code_into(quantize(_counts(plane)), plane, 4 * len(plane) + 800, wide)
    assert coded is not None  # 4 bytes per symbol and the largest table always fit
    return coded


def parse_table(chunk: memoryview, wide: bool = False) -> tuple[bytes, int]:
    """The 256 frequencies of an ans (``wide``: ans32) plane, as little-endian
    uint16, and where its states start. ValueError unless the table is well
    formed: a frequency for exactly the symbols in the bitmap, each 1..4096 in
    minimal LEB128, summing to 4096, and room for the states after it."""
    if len(chunk) < (ANS32_MIN_SIZE if wide else ANS_MIN_SIZE):
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
    if len(chunk) - states < 4 * (_LANES32 if wide else _LANES):
        raise ValueError("ans plane shorter than its table and states")
    return np.array(freqs, dtype="<u2").tobytes(), states


def decode(chunk: memoryview, out: memoryview, wide: bool = False) -> None:
    """Decode an ans (``wide``: ans32) plane into ``out`` (exactly its symbols).
    ValueError, with ``out`` zeroed, for any plane ``encode`` cannot have written."""
    try:
        freqs, pos = parse_table(chunk, wide)
    except ValueError:
        out[:] = bytes(len(out))
        raise
    native = planes_mod.native_module()
    if native is not None:
        (native.ans32_decode if wide else native.ans_decode)(freqs, chunk[pos:], out)
    else:
        decode_python(freqs, chunk[pos:], out, wide)


def decode_python(freqs: bytes, stream: memoryview, out: memoryview, wide: bool = False) -> None:
    """The decoder of the spec, one symbol at a time (the C helper's twin): ans
    renormalises by bytes from 2^23, ans32 (``wide``) by 16-bit little-endian
    words from 2^16."""
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
    lanes, low, unit = (_LANES32, _L32, 2) if wide else (_LANES, _L, 1)
    name = "ans32" if wide else "ans"  # the C helper's messages, word for word
    data = bytes(stream)
    problem = None
    if len(data) < 4 * lanes:
        problem = f"{name} plane shorter than its states"
    elif (len(data) - 4 * lanes) % unit:
        problem = "ans32 stream is not whole 16-bit words"
    if problem is not None:
        out[:] = bytes(len(out))
        raise ValueError(problem)
    x = [int.from_bytes(data[4 * k : 4 * k + 4], "little") for k in range(lanes)]
    if any(not low <= v < 1 << 32 if wide else not low <= v < low << 8 for v in x):
        problem = f"{name} state out of range"
    pos, end = 4 * lanes, len(data)
    result = bytearray(len(out))
    i = 0
    mask = _M - 1
    while problem is None and i < len(out):
        k = i % lanes
        v = x[k]
        s = slot_symbol[v & mask]
        result[i] = s
        v = f[s] * (v >> BITS) + (v & mask) - start[s]
        while v < low:
            if end - pos < unit:
                problem = f"{name} stream ends early"
                break
            v = (v << (8 * unit)) | int.from_bytes(data[pos : pos + unit], "little")
            pos += unit
        x[k] = v
        i += 1
    if problem is None and pos != end:
        problem = f"{name} stream has {'words' if wide else 'bytes'} left over"
    if problem is None and any(v != low for v in x):
        problem = f"{name} final state is not the initial one"
    if problem is not None:
        out[:] = bytes(len(out))
        raise ValueError(problem)
    out[:] = result
