"""Small, strict validators shared by the manifest, contents and signature schemas.

Each helper takes the decoded CBOR value and a ``where`` path used in messages,
and raises :class:`SchemaError` (``schema.invalid``) on any mismatch. ``bool``
is never accepted where an integer is expected, although Python says it is one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from secpack.errors import SchemaError

__all__ = [
    "as_bytes",
    "as_list",
    "as_map",
    "as_text",
    "as_uint",
    "fail",
]

# Largest integer a CBOR major-0 head can carry; also bounds every size field.
UINT64_MAX = 2**64 - 1


def fail(where: str, why: str) -> SchemaError:
    return SchemaError("schema.invalid", f"{where}: {why}")


_KEY_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def as_map(
    value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """A map with exactly the required keys, some optional ones, and nothing else."""
    if not isinstance(value, dict):
        raise fail(where, "expected a map")
    # The common case, checked first: exactly the required keys. A manifest holds
    # up to hundreds of thousands of small maps, all read before the signature
    # check, so this is one set comparison in C (the key tuples are the schema's
    # own constants, so the cache stays small).
    wanted = _KEY_SETS.get(required)
    if wanted is None:
        wanted = _KEY_SETS[required] = frozenset(required)
    if value.keys() == wanted:
        return value
    keys = set(value)
    missing = [k for k in required if k not in keys]
    if missing:
        raise fail(where, f"missing {', '.join(sorted(missing))}")
    unknown = keys - set(required) - set(optional)
    if unknown:
        # v1 readers refuse fields they do not understand; extensions go under "ext".
        raise fail(where, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return value


def as_uint(value: Any, where: str, lo: int = 0, hi: int = UINT64_MAX) -> int:
    if type(value) is not int:
        raise fail(where, "expected an unsigned integer")
    if not lo <= value <= hi:
        raise fail(where, f"{value} outside [{lo}, {hi}]")
    return value


def as_bytes(value: Any, where: str, size: int | None = None, max_size: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise fail(where, "expected a byte string")
    if size is not None and len(value) != size:
        raise fail(where, f"expected {size} bytes, got {len(value)}")
    if max_size is not None and len(value) > max_size:
        raise fail(where, f"more than {max_size} bytes")
    return value


def as_text(
    value: Any, where: str, max_len: int = 255, pattern: re.Pattern[str] | None = None
) -> str:
    if type(value) is not str:
        raise fail(where, "expected a text string")
    if len(value.encode("utf-8")) > max_len:
        raise fail(where, f"longer than {max_len} bytes")
    if pattern is not None and not pattern.fullmatch(value):
        raise fail(where, f"{value!r} does not match {pattern.pattern}")
    return value


def as_list(value: Any, where: str, max_len: int, min_len: int = 0) -> list[Any]:
    if type(value) is not list:
        raise fail(where, "expected an array")
    if not min_len <= len(value) <= max_len:
        raise fail(where, f"{len(value)} entries, expected {min_len}..{max_len}")
    return value
