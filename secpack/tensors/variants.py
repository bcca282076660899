"""Precision variants (lossy, opt-in): fp16, bf16 and per-output-channel int8.

Pure numpy transforms; reading and writing files is the caller's job. Large
tensors are processed in row blocks so that memory stays bounded by a block,
not by the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from secpack.tensors.dtypes import FLOAT_DTYPES

__all__ = [
    "VARIANTS",
    "ErrorStats",
    "quantize_int8",
    "to_float32",
    "transform_blocks",
    "unrepresentable",
    "variant_dtype",
    "wants_transform",
]

VARIANTS = ("fp16", "bf16", "int8")
# Rows per block when transforming a large tensor (a few MiB of fp32 per block).
_BLOCK_BYTES = 8 << 20
# int8 symmetric range: -127..127 keeps the grid symmetric around zero.
_QMAX = 127.0


def wants_transform(dtype: str, shape: tuple[int, ...], variant: str) -> bool:
    """Which tensors a variant changes: floats; for int8 only matrices (ndim >= 2),
    since biases and norms are small and sensitive, and stay exact."""
    if dtype not in FLOAT_DTYPES or dtype.startswith("F8"):
        return False
    if variant == "int8":
        return len(shape) >= 2 and shape[0] > 0 and int(np.prod(shape)) > 0
    return variant_dtype(variant) != dtype


def variant_dtype(variant: str) -> str:
    return {"fp16": "F16", "bf16": "BF16", "int8": "I8"}[variant]


# Smallest magnitudes that round to infinity (round to nearest even): fp16's
# largest finite value is 65504 and its last step 32, so 65520 is the midpoint
# above it; bf16's largest finite is 0x7F7F, whose midpoint to infinity is the
# float32 0x7F7F8000. int8's scales are float32, whose own midpoint past its
# largest finite value (2^128 - 2^104) is 2^128 - 2^103.
_OVERFLOW = {
    "fp16": 65520.0,
    "bf16": float(np.array(0x7F7F8000, dtype=np.uint32).view(np.float32)),
    "int8": float(2**128 - 2**103),
}


def unrepresentable(raw: bytes | memoryview, dtype: str, variant: str) -> str | None:
    """Why ``variant`` cannot hold this tensor faithfully, or None when it can.

    A variant must not turn a finite weight into an infinity, nor invent a value
    where the source has NaN or an infinity: fp16 and bf16 keep NaN and the
    infinities as they are but overflow on finite values past their range; int8
    has no NaN or infinity at all. Such a tensor stays exact in the variant.
    """
    x = np.frombuffer(raw, dtype="<f8") if dtype == "F64" else to_float32(raw, dtype)
    finite = np.isfinite(x)
    bad = int(x.size - np.count_nonzero(finite))
    if variant == "int8" and bad:
        return f"{bad} NaN or infinite value(s), which int8 cannot hold"
    limit = _OVERFLOW[variant]
    if limit > float(np.finfo(x.dtype).max):
        return None  # every finite value of the source fits
    big = int(np.count_nonzero(np.abs(x[finite]) >= x.dtype.type(limit)))
    if big:
        return f"{big} finite value(s) past {variant}'s range would become infinite"
    return None


def to_float32(raw: bytes | memoryview, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"not a float dtype: {dtype}")


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as hardware conversions do; NaN stays NaN."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def _from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32)


@dataclass
class ErrorStats:
    """Accumulates max |w - w'| and the relative L2 error ||w - w'|| / ||w||."""

    max_abs: float = 0.0
    err_sq: float = 0.0
    ref_sq: float = 0.0

    def add(self, ref: np.ndarray, approx: np.ndarray) -> None:
        """Add one block. Elements that are NaN or infinite in ``ref`` count as
        exact when ``approx`` keeps them (NaN as NaN, each infinity as itself) and
        as an infinite error when it does not, as does a finite element that
        ``approx`` turns into NaN or an infinity."""
        r = ref.astype(np.float64).ravel()
        a = approx.astype(np.float64).ravel()
        finite = np.isfinite(r)
        kept = np.where(np.isnan(r), np.isnan(a), r == a)
        if not np.all(finite | kept) or not np.isfinite(a[finite]).all():
            self.max_abs = self.err_sq = math.inf
        diff = r[finite] - a[finite]
        diff = diff[np.isfinite(diff)]
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        self.err_sq += float(np.dot(diff, diff))
        self.ref_sq += float(np.dot(r[finite], r[finite]))

    @property
    def rel_l2(self) -> float:
        if self.err_sq == 0:
            return 0.0
        return math.inf if self.ref_sq == 0 else (self.err_sq / self.ref_sq) ** 0.5


# Column pre-scaling exponents tried for int8 (0: plain per-row scales). Dividing
# each input column by |max|^a before the per-row scales flattens outlier columns;
# on all-MiniLM-L6-v2 a = 0.5 brings every matrix under 1% relative L2 error, where
# per-row scales alone leave some attention-output matrices at ~2%.
_COLUMN_EXPONENTS = (0.0, 0.5, 0.3, 0.7)


def _blocks(rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    step = max(1, _BLOCK_BYTES // max(rows.shape[1] * 4, 1))
    for start in range(0, rows.shape[0], step):
        yield start, rows[start : start + step]


def _int8_pass(
    rows: np.ndarray, col: np.ndarray | None, stats: ErrorStats, emit: bool
) -> tuple[list[bytes], np.ndarray]:
    """Quantize ``rows`` (divided by ``col`` when given) with per-row scales."""
    out: list[bytes] = []
    scales = np.empty(rows.shape[0], dtype=np.float32)
    for start, block in _blocks(rows):
        x = block if col is None else block / col[None, :]
        absmax = np.abs(np.where(np.isfinite(x), x, 0)).max(axis=1)
        scale = (absmax / _QMAX).astype(np.float32)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        q = np.clip(np.rint(x / safe[:, None]), -_QMAX, _QMAX).astype(np.int8)
        approx = q.astype(np.float32) * safe[:, None]
        stats.add(block, approx if col is None else approx * col[None, :])
        scales[start : start + len(block)] = scale
        if emit:
            out.append(q.tobytes())
    return out, scales


def quantize_int8(w: np.ndarray, stats: ErrorStats) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """Per-output-channel symmetric int8: returns (int8 values, per-row scales, per-column
    scales or None). Dequantize as ``q * row[:, None] * col[None, :]``. The column
    pre-scaling exponent with the smallest relative L2 error is chosen per tensor."""
    rows = w.reshape(w.shape[0], -1)
    colmax = np.abs(np.where(np.isfinite(rows), rows, 0)).max(axis=0)
    best: tuple[float, np.ndarray | None] | None = None
    for a in _COLUMN_EXPONENTS:
        col = None if a == 0 else np.where(colmax > 0, colmax**a, 1).astype(np.float32)
        trial = ErrorStats()
        _int8_pass(rows, col, trial, emit=False)
        if best is None or trial.rel_l2 < best[0]:
            best = (trial.rel_l2, col)
    assert best is not None
    parts, scales = _int8_pass(rows, best[1], stats, emit=True)
    return b"".join(parts), scales, best[1]


def transform_blocks(
    w: np.ndarray, variant: str, stats: ErrorStats
) -> Iterator[tuple[bytes, bytes]]:
    """Yield byte blocks of ``w`` (float32, any shape) cast to fp16 or bf16, in row
    order (int8 goes through :func:`quantize_int8`)."""
    if w.size == 0:
        return
    rows = w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1)
    for _, block in _blocks(rows):
        if variant == "fp16":
            with np.errstate(over="ignore"):
                half = block.astype("<f2")
            stats.add(block, half.astype(np.float32))
            yield half.tobytes(), b""
        elif variant == "bf16":
            h = _to_bf16(block)
            stats.add(block, _from_bf16(h))
            yield h.astype("<u2").tobytes(), b""
        else:
            raise ValueError(f"transform_blocks does not do {variant}")
