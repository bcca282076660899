"""Float weights inside files that secpack cannot parse (``.pt``/``.bin`` zip
checkpoints, ``.onnx``, ``.tflite``, ``.npy``, dlib's ``.dat``, ...): which IEEE
float layout, at which byte phase, codes a file's bytes smaller than plain zstd.

Those files hold arrays of floats among headers and structure that secpack has
no parser for (a pickle it must never run, a protobuf, a flatbuffer), and plain
zstd saves about 8 % of them, against 16-38 % for the float codec on the same
arrays (bench/ measured the sweep's real models). The codec is lossless whatever
the bytes mean, so a wrong guess costs only size, and the writer still keeps
plain zstd for each segment where it is smaller (segment.encode, ``guessed``).

The guess is measured, not inferred from file names: a few samples spread over
the file are coded with each float layout their byte statistics leave open, at
the byte phase of its top byte, and the layout that codes them smallest is kept
if it beats zstd on the same samples by a margin. The phase matters: an array that starts 2 bytes past a multiple of 4
has its exponents in the wrong byte of every fp32 element unless the segments
are cut to match (plan.py gives the file a short first segment of ``phase``
bytes).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

import numpy as np

from secpack.codec import bgx, zstd

__all__ = ["CHUNK", "MIN_FILE", "float_gain", "float_layout", "is_text", "sample_offsets"]

# Files below this stay with zstd unprobed: one sample (CHUNK) is all a file
# must hold. Models kept as many small raw arrays gain from going this low
# (natasha's slovnet, 89 arrays of 32 B to 1 MB: 0.9 % smaller than with a
# 256 KiB floor; basic-pitch's CoreML weights, 3.4 %), at 1-3 ms of probing
# per file, for the 4096 largest files at most (plan.MAX_PROBED).
MIN_FILE = 64 * 1024
# Each sample; 64 KiB of fp32 is 16 Ki elements, above ans's minimum for H.
CHUNK = 64 * 1024
# At most this many samples (512 KiB), one per MiB of file from 2 up: enough to
# see past a header at the start, bounded for multi-gigabyte checkpoints.
MAX_CHUNKS = 8
# Samples start at multiples of this, so that a phase (the offset of the arrays'
# elements modulo their width, 4 at most) means the same in every sample.
_ALIGN = 8
# (safetensors dtype, the bgx float layout, its element width), in the order tried.
_LAYOUTS = (("F32", "fp32", 4), ("BF16", "bf16", 2), ("F16", "fp16", 2))
# zstd level of the comparison: the balanced profile's.
_ZSTD_LEVEL = 3
# Samples that zstd takes below this fraction are text or sparse (tokenizer
# files, vocabularies, pruned tables): float coding has never won there, and
# the probe's cost is saved. Above _INCOMPRESSIBLE they are already compressed
# (images, audio, zip archives with deflate): nothing to gain either.
_COMPRESSIBLE = 0.3
_INCOMPRESSIBLE = 0.985
# _candidates: below this likeness the elements are taken as 2 bytes wide, above
# the next (with more than _CLEAR_BITS between the most and least random byte
# positions) as 4; between, every layout is tried. Set from the sweep's files:
# clear 16-bit files measured 0.00-0.17, fp32 files 1.0 and up (one PaddleOCR
# file 0.59), TFLite files mixing fp16 and fp32 0.29-0.74.
_TWO_BYTE_LIKENESS = 0.2
_FOUR_BYTE_LIKENESS = 0.95
_CLEAR_BITS = 0.5
# Text (is_text) may hold this fraction of control bytes (besides tab, newline,
# carriage return and form feed), so that a stray one does not make it binary;
# zeros (a sparse array) and other small integers go far past it.
_TEXT_CONTROLS = 0.01
_NOT_CONTROL = bytes(b for b in range(256) if b >= 0x20 and b != 0x7F) + b"\t\n\r\f"
# The best layout must code the samples at least this much smaller than zstd:
# a smaller margin is within what the samples can tell about the rest of the file.
_MIN_GAIN = 0.01


def sample_offsets(size: int) -> list[int]:
    """Where to take the samples of a file of ``size`` bytes (at least MIN_FILE):
    spread evenly from the start to the end, each at a multiple of 8."""
    count = max(2, min(MAX_CHUNKS, size // (1 << 20)))
    span = size - CHUNK
    return sorted({(span * i // (count - 1)) // _ALIGN * _ALIGN for i in range(count)})


def float_layout(samples: Sequence[bytes]) -> tuple[str, int] | None:
    """The (safetensors dtype, phase) that codes ``samples`` (taken at the offsets
    of ``sample_offsets``) smallest, or None when no float layout beats zstd on
    them by the margin, or this build cannot encode bgx."""
    found = float_gain(samples)
    return None if found is None else (found[0], found[1])


def float_gain(samples: Sequence[bytes]) -> tuple[str, int, float] | None:
    """``float_layout``'s (dtype, phase), and the size of the samples so coded as
    a fraction of zstd's: what the float layout saves on the file, about."""
    if not samples or not bgx.available():
        return None
    plain = [min(len(zstd.compress(s, _ZSTD_LEVEL)), len(s)) for s in samples]
    total, zstd_total = sum(len(s) for s in samples), sum(plain)
    if not _COMPRESSIBLE * total <= zstd_total <= _INCOMPRESSIBLE * total:
        return None
    best: tuple[int, str, int] | None = None
    for dtype, kind, width, phase in _candidates(samples):
        # Each sample as the writer would code a segment of it: the float layout
        # or plain zstd, whichever is smaller (a file mixes arrays with
        # structure, and arrays at other phases).
        size = 0
        for sample, packed in zip(samples, plain, strict=True):
            cut = sample[phase : phase + (len(sample) - phase) // width * width]
            found = bgx.encode(memoryview(cut), kind, 0)
            coded = len(found[1]) + len(sample) - len(cut) if found is not None else packed
            size += min(coded, packed)
        if best is None or size < best[0]:
            best = (size, dtype, phase)
    if best is None or best[0] > (1 - _MIN_GAIN) * zstd_total:
        return None
    return best[1], best[2], best[0] / zstd_total


def is_text(samples: Sequence[bytes | memoryview]) -> bool:
    """Whether every sample is UTF-8 text with at most _TEXT_CONTROLS of control
    bytes. Arrays of floats are not: their mantissa bytes are random, and a byte of
    0x80-0xBF without a lead byte before it is invalid UTF-8 (fp32's 1.0 is
    00 00 80 3F). Text can code smaller as floats on its samples, as UTF-8 tables
    of consecutive code points do (sacremoses' perluniprops: 0.80 of zstd -3's,
    as bf16); see segment._deep_may_win for what that cost."""
    for part in samples:
        sample = bytes(part)
        # A sample may begin inside a character (up to 3 continuation bytes) and
        # end inside one (an incremental decoder, not final, leaves that out).
        start = 0
        while start < min(3, len(sample)) and 0x80 <= sample[start] <= 0xBF:
            start += 1
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample[start:], final=False)
        except UnicodeDecodeError:
            return False
        if len(sample.translate(None, _NOT_CONTROL)) > _TEXT_CONTROLS * len(sample):
            return False  # NULs and other controls: a binary table that decodes by chance
    return True


def _candidates(samples: Sequence[bytes]) -> list[tuple[str, str, int, int]]:
    """The layouts worth coding the samples with, each at its phase: (dtype, bgx
    layout, width, phase). From the order-0 entropy of the bytes at each position
    modulo 4, where the top byte of an element (sign and exponent; 1-6 bits on
    real weights) is the least random and mantissa bytes are close to 8 bits:
    - the byte two positions from the top about as orderly as the top itself:
      2-byte elements, bf16 and fp16 are tried;
    - that byte about as random as the mantissa bytes, with a clear top: fp32
      alone;
    - anything between (mixed or flat statistics, as in many TFLite and dlib
      files): all three.
    Coding every layout was most of a small file's seal time."""
    bits = _position_bits(samples, 4)
    top = int(np.argmin(bits))
    partner = (top + 2) % 4
    mantissa = min(bits[(top + 1) % 4], bits[(top + 3) % 4])
    # 0 when the partner looks like the top byte, 1 when it looks like mantissa.
    likeness = (bits[partner] - bits[top]) / max(mantissa - bits[top], 1e-9)
    # Element bytes are little-endian: at phase q the top byte is at q + width - 1.
    if likeness < _TWO_BYTE_LIKENESS:
        return [(d, k, w, (top - 1) % 2) for d, k, w in _LAYOUTS if w == 2]
    if likeness > _FOUR_BYTE_LIKENESS and float(bits.max() - bits.min()) > _CLEAR_BITS:
        return [(d, k, w, (top - 3) % 4) for d, k, w in _LAYOUTS if w == 4]
    # Each width at the phase of its own least random position.
    return [(d, k, w, _phase(samples, w)) for d, k, w in _LAYOUTS]


def _position_bits(samples: Sequence[bytes], width: int) -> np.ndarray:
    """Order-0 entropy, in bits, of the samples' bytes at each position modulo
    ``width``."""
    counts = np.zeros((width, 256), dtype=np.int64)
    for sample in samples:
        data = np.frombuffer(sample, dtype=np.uint8)
        for k in range(width):
            counts[k] += np.bincount(data[k::width], minlength=256)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits: np.ndarray = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return bits


def _phase(samples: Sequence[bytes], width: int) -> int:
    """The phase at which elements of ``width`` bytes have their top byte where
    the samples' bytes are least random."""
    top = int(np.argmin(_position_bits(samples, width)))
    return (top - (width - 1)) % width
