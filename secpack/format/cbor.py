"""Strict, deterministic CBOR (RFC 8949 §4.2.1) over cbor2.

cbor2 decodes well but has no input-size cap, accepts trailing bytes, and
knows every built-in tag. So decoding here is three steps:

1. :func:`_scan` walks the raw bytes once, without building objects, and
   refuses anything outside the subset secpack uses: tags, indefinite lengths,
   simple values other than false/true/null, non-text map keys (where the
   caller asks for text keys), non-shortest heads, unsorted or duplicate map
   keys, declared lengths longer than the remaining input, trailing bytes,
   invalid UTF-8, and depth or item counts over the caller's limits.
2. cbor2 builds the objects from bytes already known to be safe.
3. The objects are re-encoded canonically and must equal the input bytes, which
   catches what the scan leaves to cbor2 (shortest float forms).
"""

from __future__ import annotations

from typing import Any

from secpack.errors import CborError

__all__ = ["decode", "encode"]

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
    import cbor2

    return bytes(cbor2.dumps(obj, canonical=True))


def decode(
    data: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    max_items: int,
    text_keys: bool = True,
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
    _scan(data, max_depth=max_depth, max_items=max_items, text_keys=text_keys)

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
    if encode(obj) != data:
        raise CborError("cbor.noncanonical", "item does not re-encode to identical bytes")
    return obj


def _scan(data: bytes, *, max_depth: int, max_items: int, text_keys: bool) -> None:
    end = len(data)
    pos = 0
    items = 0
    # Each open container: [items left, is_map, previous key span start, previous key span end].
    stack: list[list[int]] = []
    while True:
        if pos >= end:
            raise CborError("cbor.malformed", "truncated item")
        is_key = bool(stack) and stack[-1][1] == 1 and stack[-1][0] % 2 == 0
        key_start = pos
        ib = data[pos]
        major, ai = ib >> 5, ib & 0x1F
        pos += 1
        if ai < 24:
            arg = ai
        elif ai in _ARG_BYTES:
            width = _ARG_BYTES[ai]
            if pos + width > end:
                raise CborError("cbor.malformed", "truncated head")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if major != _MAJOR_SIMPLE and arg < _MIN_ARG[ai]:
                raise CborError("cbor.noncanonical", f"non-shortest head at offset {key_start}")
        elif ai == 31:
            if major in (_MAJOR_BSTR, _MAJOR_TSTR, _MAJOR_ARRAY, _MAJOR_MAP):
                raise CborError("cbor.forbidden", f"indefinite length at offset {key_start}")
            raise CborError("cbor.malformed", f"break or invalid head at offset {key_start}")
        else:
            raise CborError("cbor.malformed", f"reserved additional information at {key_start}")

        if is_key and major != _MAJOR_TSTR and (text_keys or major > _MAJOR_NINT):
            raise CborError("cbor.forbidden", f"map key of major type {major} at {key_start}")

        items += 1
        if items > max_items:
            raise CborError("cbor.limit", f"more than {max_items} items")

        opened = 0
        if major in (_MAJOR_UINT, _MAJOR_NINT):
            pass
        elif major in (_MAJOR_BSTR, _MAJOR_TSTR):
            if arg > end - pos:
                raise CborError("cbor.malformed", f"string length {arg} runs past the input")
            if major == _MAJOR_TSTR:
                try:
                    data[pos : pos + arg].decode("utf-8", errors="strict")
                except UnicodeDecodeError:
                    raise CborError("cbor.malformed", f"invalid UTF-8 at offset {pos}") from None
            pos += arg
        elif major in (_MAJOR_ARRAY, _MAJOR_MAP):
            count = arg if major == _MAJOR_ARRAY else 2 * arg
            # Every item takes at least one byte: a longer declared count cannot be real.
            if count > end - pos:
                raise CborError("cbor.malformed", f"container of {arg} runs past the input")
            if count:
                if len(stack) + 1 > max_depth:
                    raise CborError("cbor.limit", f"nesting deeper than {max_depth}")
                stack.append([count, 1 if major == _MAJOR_MAP else 0, -1, -1])
                opened = 1
        elif major == _MAJOR_TAG:
            raise CborError("cbor.forbidden", f"tag {arg} at offset {key_start}")
        elif ai not in _SIMPLE_ALLOWED and ai not in _FLOAT_AI:
            raise CborError("cbor.forbidden", f"simple value at offset {key_start}")

        if is_key:
            top = stack[-1]
            if top[2] >= 0 and data[top[2] : top[3]] >= data[key_start:pos]:
                raise CborError(
                    "cbor.noncanonical", f"map keys unsorted or duplicated at {key_start}"
                )
            top[2], top[3] = key_start, pos
        if opened:
            continue
        # Close every container this item completed.
        while stack:
            stack[-1][0] -= 1
            if stack[-1][0]:
                break
            stack.pop()
        if not stack:
            break
    if pos != end:
        raise CborError("cbor.malformed", f"{end - pos} trailing bytes")
