"""Precision variants (lossy, opt-in): fp16, bf16 and per-output-channel int8.

Pure numpy transforms; reading and writing files is the caller's job. Every
transform reads its tensor through an :data:`ElementReader`, a block of elements
at a time, and yields its output a block at a time, so that memory stays bounded
by a block (or, for int8, by one row if a row is larger), not by the tensor: the
embedding matrix of a 4 GiB model is itself 0.5-1 GiB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from secpack.tensors.dtypes import DTYPE_SIZES, FLOAT_DTYPES

__all__ = [
    "INT8_TRIALS",
    "VARIANTS",
    "VARIANTS_ASKED",
    "VARIANTS_ONLY",
    "ElementReader",
    "ErrorStats",
    "int8_column_scale",
    "int8_scale_table",
    "int8_table_problem",
    "int8_values",
    "present_entries",
    "to_values",
    "transform_blocks",
    "unrepresentable",
    "variant_dtype",
    "wants_transform",
]

VARIANTS = ("fp16", "bf16", "int8")
# Package metadata key (value "true") that ``seal --variants-only`` sets: the exact
# components hold no tensors, so a loader must not offer "exact" beside a variant.
VARIANTS_ONLY = "variants-only"
# Manifest metadata key: the variants seal was asked for, comma-separated. A
# weights or adapter component without a stored one of them is served by its exact
# weights: seal stores no variant that would change no tensor (fp16 of fp16). One
# key, of at most a few bytes, whatever the number of components.
VARIANTS_ASKED = "variants"
# Elements per block when transforming a large tensor: 8 MiB of float32, so that
# the few temporaries numpy makes per block stay at tens of MiB.
_BLOCK_ELEMS = (8 << 20) // 4

# (first element, count) -> those elements of the source tensor in row-major
# order, as :func:`to_values` gives them.
ElementReader = Callable[[int, int], np.ndarray]
# int8 symmetric range: -127..127 keeps the grid symmetric around zero.
_QMAX = 127.0


def int8_scale_table(metadata: object) -> dict[str, list[str]] | None:
    """The ``secpack.scales`` table of an int8 variant file's ``__metadata__``
    (docs/FORMAT.md §15): tensor name -> [row-scale tensor, column-scale tensor].
    None when it is missing or not of that shape, or when a tensor the variant
    changed (``secpack.errors``) has no entry: its int8 codes mean nothing
    without their scales, and would be served as raw codes."""
    if not isinstance(metadata, dict):
        return None
    try:
        table = json.loads(metadata["secpack.scales"])
        changed = json.loads(metadata["secpack.errors"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(table, dict) or not isinstance(changed, dict) or changed.keys() - table:
        return None
    for pair in table.values():
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            return None
    return table


def int8_table_problem(
    table: Mapping[str, list[str]], tensors: Mapping[str, tuple[str, tuple[int, ...]]]
) -> str | None:
    """What makes ``table`` unusable for ``tensors`` (name -> (dtype, shape)), or
    None. Each entry names a tensor of int8 codes of at least one dimension, with
    a float32 row scale of one value per row and a column scale of one per column
    (the rest of the row-major shape); no tensor is both codes and a scale. An
    entry for a tensor that is not there is no problem: readers ignore it
    (present_entries), so the tensors it names are not taken for scales."""
    used = {scale for pair in table.values() for scale in pair}
    if used & table.keys():
        return "an int8 tensor is named as another's scale"
    for name, (row, col) in table.items():
        if name not in tensors:
            continue
        if row not in tensors or col not in tensors:
            return f"{name}: its int8 scale tensors are missing"
        dtype, shape = tensors[name]
        count = math.prod(shape)
        rows = shape[0] if shape else 0
        if (
            dtype != "I8"
            or not shape
            or tensors[row] != ("F32", (rows,))
            or tensors[col] != ("F32", (count // rows if rows else 0,))
        ):
            return f"{name}: int8 scales do not fit the tensor"
    return None


def present_entries(
    table: Mapping[str, list[str]], tensors: Collection[str]
) -> dict[str, list[str]]:
    """The entries of ``table`` for tensors that are there. One for a tensor that
    is not (a hand-made file's stale entry) names nothing to dequantize; kept, it
    made the tensors it named count as scales, which are not served: they went
    missing from every int8 load without an error."""
    return {name: pair for name, pair in table.items() if name in tensors}


def wants_transform(dtype: str, shape: tuple[int, ...], variant: str) -> bool:
    """Which tensors a variant changes: floats not already of its dtype; for int8
    only matrices (ndim >= 2) that its scales leave smaller, since biases and norms
    are small and sensitive, and stay exact."""
    if dtype not in FLOAT_DTYPES or dtype.startswith("F8"):
        return False
    if variant == "int8":
        if len(shape) < 2 or shape[0] <= 0:
            return False
        count = int(np.prod(shape))
        rows, cols = shape[0], count // shape[0]
        # Its scales are float32, one per row and one per column: a (1, N) or
        # (N, 1) tensor would come out larger than it went in.
        return count > 0 and count + 4 * (rows + cols) < count * DTYPE_SIZES[dtype]
    return variant_dtype(variant) != dtype


def variant_dtype(variant: str) -> str:
    return {"fp16": "F16", "bf16": "BF16", "int8": "I8"}[variant]


# Smallest magnitudes that round to infinity (round to nearest even): fp16's
# largest finite value is 65504 and its last step 32, so 65520 is the midpoint
# above it; bf16's largest finite is 0x7F7F, whose midpoint to infinity is the
# float32 0x7F7F8000. int8's scales are float32, whose own midpoint past its
# largest finite value (2^128 - 2^104) is 2^128 - 2^103.
# Below its smallest normal number a float keeps fewer significant bits, down to
# none: a tensor whose values all lie there (fp32 weights of 1e-40, or of 1e-6 for
# fp16) would come out mostly or wholly zero. int8's scales are float32 and follow
# the tensor's own scale.
_SMALLEST_NORMAL = {"fp16": 2.0**-14, "bf16": 2.0**-126}
_OVERFLOW = {
    "fp16": 65520.0,
    "bf16": float(np.array(0x7F7F8000, dtype=np.uint32).view(np.float32)),
    "int8": float(2**128 - 2**103),
}


def _flat_blocks(read: ElementReader, count: int) -> Iterator[np.ndarray]:
    for first in range(0, count, _BLOCK_ELEMS):
        yield read(first, min(_BLOCK_ELEMS, count - first))


def unrepresentable(read: ElementReader, count: int, variant: str) -> str | None:
    """Why ``variant`` cannot hold this tensor of ``count`` elements faithfully, or
    None when it can.

    A variant must not turn a finite weight into an infinity, nor invent a value
    where the source has NaN or an infinity: fp16 and bf16 keep NaN and the
    infinities as they are but overflow on finite values past their range; int8
    has no NaN or infinity at all. Such a tensor stays exact in the variant.
    """
    limit = _OVERFLOW[variant]
    bad = big = 0
    top = 0.0
    for x in _flat_blocks(read, count):
        finite = np.isfinite(x)
        bad += int(x.size - np.count_nonzero(finite))
        magnitudes = np.abs(x[finite])
        if magnitudes.size:
            top = max(top, float(magnitudes.max()))
        # A float32 source cannot reach int8's limit, which float32 cannot hold.
        if limit <= float(np.finfo(x.dtype).max):
            big += int(np.count_nonzero(magnitudes >= x.dtype.type(limit)))
    if variant == "int8" and bad:
        return f"{bad} NaN or infinite value(s), which int8 cannot hold"
    if big:
        return f"{big} finite value(s) past {variant}'s range would become infinite"
    tiny = _SMALLEST_NORMAL.get(variant)
    if tiny is not None and 0.0 < top < tiny:
        return (
            f"every value is below {variant}'s smallest normal number: few or no bits would be left"
        )
    return None


def to_values(raw: bytes | memoryview, dtype: str) -> np.ndarray:
    """A float tensor's bytes as numbers: float64 for F64, float32 for the rest (a
    fresh array either way)."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype(np.float64, copy=True)
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
        # The usual block: every element finite in both. Then both sums of squares
        # come out finite, and a NaN or infinity anywhere makes one of them NaN or
        # infinite (so does a float64 square past its range), which takes the
        # general path below. The sums are the general path's, term for term: the
        # masks there would keep every element. The masks and copies were four
        # fifths of an int8 variant's time.
        # (An infinity in both is inf - inf here: NaN, which the check below
        # sends to the general path, and no warning for it.)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = r - a
        ref_sq = float(np.dot(r, r))
        err_sq = float(np.dot(diff, diff))
        if math.isfinite(ref_sq) and math.isfinite(err_sq):
            if diff.size:
                self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
            self.err_sq += err_sq
            self.ref_sq += ref_sq
            return
        self._add_masked(r, a)

    def _add_masked(self, r: np.ndarray, a: np.ndarray) -> None:
        """:meth:`add` for any block (float64, flat), by masks."""
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
INT8_TRIALS = len(_COLUMN_EXPONENTS)


def _row_blocks(read: ElementReader, rows: int, cols: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block of whole rows): about _BLOCK_ELEMS elements, or one row."""
    step = max(1, _BLOCK_ELEMS // max(cols, 1))
    for start in range(0, rows, step):
        n = min(step, rows - start)
        yield start, read(start * cols, n * cols).reshape(n, cols)


def int8_values(
    read: ElementReader,
    rows: int,
    cols: int,
    col: np.ndarray | None,
    stats: ErrorStats | None,
    scales: np.ndarray,
) -> Iterator[bytes]:
    """The int8 values of a ``rows`` x ``cols`` tensor (each column divided by
    ``col`` first when given), a block of rows at a time; each row's scale goes
    into ``scales`` and the error into ``stats`` (unless None: the caller has it
    from the trial that chose ``col``)."""
    for start, block in _row_blocks(read, rows, cols):
        x = block if col is None else block / col[None, :]
        absmax = np.abs(np.where(np.isfinite(x), x, 0)).max(axis=1)
        scale = (absmax / _QMAX).astype(np.float32)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        q = np.clip(np.rint(x / safe[:, None]), -_QMAX, _QMAX).astype(np.int8)
        if stats is not None:
            approx = q.astype(np.float32) * safe[:, None]
            stats.add(block, approx if col is None else approx * col[None, :])
        scales[start : start + len(block)] = scale
        yield q.tobytes()


def int8_column_scale(
    read: ElementReader, rows: int, cols: int, pool: Executor | None = None
) -> tuple[np.ndarray | None, ErrorStats]:
    """The per-column pre-scale (float32) of _COLUMN_EXPONENTS with the smallest
    relative L2 error, or None when plain per-row scales are best; and that
    trial's error, which is the error of the values :func:`int8_values` then
    writes with it (the same reads, the same arithmetic). Reads the tensor once
    for the column maxima and once per exponent tried; the trials run on
    ``pool`` when given (numpy lets go of the GIL for the arithmetic), and the
    choice is the same in any order."""
    colmax = np.zeros(cols, dtype=np.float64)
    for _, block in _row_blocks(read, rows, cols):
        np.maximum(colmax, np.abs(np.where(np.isfinite(block), block, 0)).max(axis=0), out=colmax)

    def attempt(a: float) -> tuple[ErrorStats, np.ndarray | None]:
        col = None if a == 0 else np.where(colmax > 0, colmax**a, 1).astype(np.float32)
        trial = ErrorStats()
        for _ in int8_values(read, rows, cols, col, trial, np.empty(rows, dtype=np.float32)):
            pass
        return trial, col

    trials = (pool.map if pool is not None else map)(attempt, _COLUMN_EXPONENTS)
    best: tuple[ErrorStats, np.ndarray | None] | None = None
    for trial, col in trials:  # in _COLUMN_EXPONENTS order: a tie keeps the first
        if best is None or trial.rel_l2 < best[0].rel_l2:
            best = (trial, col)
    assert best is not None
    return best[1], best[0]


def transform_blocks(
    read: ElementReader, count: int, variant: str, stats: ErrorStats
) -> Iterator[bytes]:
    """The ``count`` elements of a tensor cast to fp16 or bf16, a block at a time
    in element order (int8 goes through :func:`int8_values`)."""
    for block in _flat_blocks(read, count):
        if variant == "fp16":
            with np.errstate(over="ignore"):
                half = block.astype("<f2")
            stats.add(block, half.astype(np.float32))
            yield half.tobytes()
        elif variant == "bf16":
            h = _to_bf16(block)
            stats.add(block, _from_bf16(h))
            yield h.astype("<u2").tobytes()
        else:
            raise ValueError(f"transform_blocks does not do {variant}")
