"""Tensor element types and checked size arithmetic.

The names are safetensors' own. Only types with a fixed whole-byte width are
allowed; anything else is refused rather than guessed at.
"""

from __future__ import annotations

from secpack.errors import TensorError

__all__ = ["DTYPE_SIZES", "FLOAT_DTYPES", "MAX_ELEMENTS", "checked_nbytes", "coded_as"]

# numpy and torch index with signed 64-bit integers: the product of the dimensions,
# zero-size ones counted as 1 (a zero-size tensor may still not have a 2^64 axis),
# must stay below 2^62 so that no framework overflows computing strides or sizes.
MAX_ELEMENTS = 1 << 62

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    # The fp8 variants without infinities and with one NaN (AMD's MI300 formats).
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    # An 8-bit power of two with no sign and no mantissa: the shared scale of the
    # MX block formats, stored beside F8_E4M3 weights in current checkpoints.
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    # complex64: a float32 real part, then a float32 imaginary part.
    "C64": 8,
}

# IEEE-style layouts (sign, exponent, mantissa) that byte grouping knows how to split.
# (F8_E8M0 has neither sign nor mantissa, and C64 is two floats: neither is one.)
FLOAT_DTYPES = frozenset(
    {"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F16", "BF16", "F32", "F64"}
)

# Types whose bytes the codecs see as another type's: a complex64 tensor is a
# float32 array of twice its length, and codes as well as one.
_CODED_AS = {"C64": "F32"}


def coded_as(dtype: str) -> str:
    """The dtype that a tensor's segments are coded as."""
    return _CODED_AS.get(dtype, dtype)


def checked_nbytes(dtype: str, shape: list[int] | tuple[int, ...], max_ndim: int) -> int:
    """``prod(shape) * itemsize`` with every input checked; Python ints never overflow,
    so the only question is whether the inputs are sane."""
    size = DTYPE_SIZES.get(dtype)
    if size is None:
        raise TensorError("tensor.invalid", f"dtype {dtype!r} is not supported")
    if len(shape) > max_ndim:
        raise TensorError("tensor.invalid", f"{len(shape)} dimensions (limit {max_ndim})")
    count = 1
    extent = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise TensorError("tensor.invalid", f"dimension {dim!r} is not a non-negative integer")
        count *= dim
        extent *= max(dim, 1)
    if extent * size >= MAX_ELEMENTS:
        raise TensorError("tensor.invalid", f"shape {list(shape)} is too large to represent")
    return count * size
