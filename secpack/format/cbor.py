"""Strict, deterministic CBOR (RFC 8949 §4.2.1) over cbor2.

cbor2 decodes well but has no input-size cap, accepts trailing bytes, and
knows every built-in tag. So decoding here is three steps:

1. :func:`_scan` walks the raw bytes once, without building objects, and
   refuses anything outside the subset secpack uses: tags, indefinite lengths,
   simple values other than false/true/null, non-text map keys (where the
   caller asks for text keys), non-shortest heads, unsorted or duplicate map
   keys, floats not in their shortest form, declared lengths longer than the
   remaining input, trailing bytes, invalid UTF-8, and depth or item counts
   over the caller's limits. What passes is in deterministic encoding.
2. cbor2 builds the objects from bytes already known to be safe.

(The shortest-float rule used to be checked by re-encoding the decoded objects
and comparing: one float anywhere in an unsigned 60 MB manifest made that a
second copy of it, 125 MB and about a second of CPU before its signature was
looked at.)

The scan runs in C (secpack/format/_cbor.c) where that was built, and otherwise
as :func:`_scan_py` here, which is the reference: both give the same verdict,
code and message on every input (tests/unit/test_cbor.py compares them).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

from secpack.errors import CborError

__all__ = ["NATIVE", "decode", "encode"]

_native: ModuleType | None
try:
    from secpack.format import _cbor as _native
except ImportError:  # built without a C compiler: _scan_py below
    _native = None

NATIVE = _native is not None
# (getattr: a build from before the encoder was added still has the scan.)
_native_encode: Callable[[object], bytes | None] | None = getattr(_native, "encode", None)
# The C scan takes its limits as uint64; anything else goes to the Python scan.
_UINT64_MAX = (1 << 64) - 1

_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BSTR, _MAJOR_TSTR = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 4, 5, 6, 7
# Additional-information values 20..22 are false, true and null: the only simple values allowed.
_SIMPLE_ALLOWED = (20, 21, 22)
# Additional info 25/26/27 under major 7 are half, single and double floats.
_FLOAT_AI = (25, 26, 27)
# Smallest argument that legitimately needs a 1/2/4/8-byte head (shortest-form rule).
_MIN_ARG = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def encode(obj: Any) -> bytes:
    """Encode ``obj`` deterministically (RFC 8949 §4.2.1 for text-keyed maps)."""
    if _native is not None and _native_encode is not None:
        # The C encoder writes cbor2's canonical bytes, five to ten times faster,
        # for the types secpack builds its objects from; None for anything else.
        # (_native is checked as well so that setting it to None, as the tests do
        # to run the Python scan, runs the all-Python path for both directions.)
        data = _native_encode(obj)
        if data is not None:
            return data
    import cbor2

    return bytes(cbor2.dumps(obj, canonical=True))


# A map's entries are bounded separately: no secpack map has more than a few hundred,
# and a million-entry map costs far more to build than a million-element array.
DEFAULT_MAX_MAP_ENTRIES = 4096


def decode(
    data: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    max_items: int,
    text_keys: bool = True,
    max_map_entries: int = DEFAULT_MAX_MAP_ENTRIES,
) -> Any:
    """Decode one strict, deterministic CBOR item that fills ``data`` exactly.

    Raises :class:`CborError` with code ``cbor.limit``, ``cbor.malformed``,
    ``cbor.forbidden`` or ``cbor.noncanonical``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise CborError("cbor.limit", f"{len(data)} bytes exceeds the {max_bytes}-byte cap")
    _scan(
        data,
        max_depth=max_depth,
        max_items=max_items,
        text_keys=text_keys,
        max_map_entries=max_map_entries,
    )

    import cbor2

    try:
        obj = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=max_depth + 1,
        )
    except (cbor2.CBORDecodeError, ValueError, OverflowError) as exc:
        # The scan admits only the subset cbor2 decodes; anything left is malformed.
        raise CborError("cbor.malformed", f"cbor2 refused the item: {type(exc).__name__}") from None
    return obj


def _float_shortest(ai: int, bits: int) -> bool:
    """The shortest-float rule (RFC 8949 §4.2.1), as cbor2's canonical mode writes
    floats: every NaN as the half 0x7e00, infinities as halves, any other value in
    the narrowest of half, single and double that holds it exactly."""
    if ai == 25:
        nan = bits & 0x7C00 == 0x7C00 and bits & 0x3FF
        return not nan or bits == 0x7E00
    width, narrower = (4, "<e") if ai == 26 else (8, "<f")
    (value,) = struct.unpack(">f" if width == 4 else ">d", bits.to_bytes(width, "big"))
    if not math.isfinite(value):
        return False
    try:
        (narrow,) = struct.unpack(narrower, struct.pack(narrower, value))
    except OverflowError:  # past the narrower format's largest value
        return True
    return bool(narrow != value)


def _scan(
    data: bytes, *, max_depth: int, max_items: int, text_keys: bool, max_map_entries: int
) -> bool:
    """Validate ``data`` structurally and for deterministic encoding; return
    whether it holds any float."""
    limits = (max_depth, max_items, max_map_entries)
    if _native is None or not all(0 <= v <= _UINT64_MAX for v in limits):
        return _scan_py(
            data,
            max_depth=max_depth,
            max_items=max_items,
            text_keys=text_keys,
            max_map_entries=max_map_entries,
        )
    result = _native.scan(data, max_depth, max_items, text_keys, max_map_entries)
    if isinstance(result, tuple):
        raise CborError(*result)
    return bool(result)


def _scan_py(
    data: bytes, *, max_depth: int, max_items: int, text_keys: bool, max_map_entries: int
) -> bool:
    """:func:`_scan` in Python: the reference the C scan must agree with."""
    end = len(data)
    pos = 0
    items = 0
    floats = False
    # Open containers: [items left, is_map, previous key start, previous key end].
    stack: list[list[int]] = []
    top: list[int] | None = None  # stack[-1], kept in a local: this loop is hot
    from_bytes = int.from_bytes
    while True:
        if pos >= end:
            raise CborError("cbor.malformed", "truncated item")
        start = pos
        ib = data[pos]
        pos += 1
        items += 1
        major = ib >> 5
        ai = ib & 0x1F
        is_key = top is not None and top[1] and not top[0] & 1
        # Fast path: a one-byte integer, or an empty array or map, that is not a map
        # key (most array members, and the cheapest items a hostile input can repeat).
        if (
            ai < 24
            and (major <= _MAJOR_NINT or (ai == 0 and major >= _MAJOR_ARRAY))
            and major <= _MAJOR_MAP
            and not is_key
        ):
            pass
        else:
            if ai < 24:
                arg = ai
            elif ai in _ARG_BYTES:
                width = _ARG_BYTES[ai]
                if pos + width > end:
                    raise CborError("cbor.malformed", "truncated head")
                arg = from_bytes(data[pos : pos + width], "big")
                pos += width
                if major != _MAJOR_SIMPLE and arg < _MIN_ARG[ai]:
                    raise CborError("cbor.noncanonical", f"non-shortest head at offset {start}")
            elif ai == 31:
                if _MAJOR_BSTR <= major <= _MAJOR_MAP:
                    raise CborError("cbor.forbidden", f"indefinite length at offset {start}")
                raise CborError("cbor.malformed", f"break or invalid head at offset {start}")
            else:
                raise CborError("cbor.malformed", f"reserved additional information at {start}")
            if is_key and major != _MAJOR_TSTR and (text_keys or major > _MAJOR_NINT):
                raise CborError("cbor.forbidden", f"map key of major type {major} at {start}")
            if major in (_MAJOR_BSTR, _MAJOR_TSTR):
                if arg > end - pos:
                    raise CborError("cbor.malformed", f"string length {arg} runs past the input")
                if major == _MAJOR_TSTR:
                    try:
                        data[pos : pos + arg].decode("utf-8")
                    except UnicodeDecodeError:
                        raise CborError(
                            "cbor.malformed", f"invalid UTF-8 at offset {pos}"
                        ) from None
                pos += arg
            elif major in (_MAJOR_ARRAY, _MAJOR_MAP):
                # Every item takes at least one byte: a longer declared count cannot be real.
                count = arg if major == _MAJOR_ARRAY else 2 * arg
                if count > end - pos:
                    raise CborError("cbor.malformed", f"container of {arg} runs past the input")
                if major == _MAJOR_MAP and arg > max_map_entries:
                    raise CborError("cbor.limit", f"map of {arg} entries at offset {start}")
                if count:
                    if items > max_items:
                        raise CborError("cbor.limit", f"more than {max_items} items")
                    if len(stack) >= max_depth:
                        raise CborError("cbor.limit", f"nesting deeper than {max_depth}")
                    top = [count, major == _MAJOR_MAP, -1, -1]
                    stack.append(top)
                    continue
            elif major == _MAJOR_TAG:
                raise CborError("cbor.forbidden", f"tag {arg} at offset {start}")
            elif major == _MAJOR_SIMPLE:
                if ai in _FLOAT_AI:
                    floats = True
                    if not _float_shortest(ai, arg):
                        raise CborError(
                            "cbor.noncanonical", f"float not in its shortest form at offset {start}"
                        )
                elif ai not in _SIMPLE_ALLOWED:
                    raise CborError("cbor.forbidden", f"simple value at offset {start}")
            if is_key and top is not None:
                if top[2] >= 0 and data[top[2] : top[3]] >= data[start:pos]:
                    raise CborError(
                        "cbor.noncanonical", f"map keys unsorted or duplicated at {start}"
                    )
                top[2] = start
                top[3] = pos
        if items > max_items:
            raise CborError("cbor.limit", f"more than {max_items} items")
        # Close every container this item completed.
        while top is not None:
            top[0] -= 1
            if top[0]:
                break
            stack.pop()
            top = stack[-1] if stack else None
        if top is None:
            break
    if pos != end:
        raise CborError("cbor.malformed", f"{end - pos} trailing bytes")
    return floats
