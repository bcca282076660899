"""A strict reader for the safetensors header (pure: bytes in, table out).

Stricter than safetensors itself (see docs/FORMAT.md, "Safetensors input"):
duplicate JSON keys, names equal after NFC normalisation, NaN/Infinity
literals, non-integer dimensions, unknown entry fields, gaps, overlaps, and a
zero-size tensor placed anywhere but at the running offset are all refused.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from secpack.errors import InputError, TensorError
from secpack.tensors.dtypes import DTYPE_SIZES, checked_nbytes

__all__ = [
    "PREFIX_LEN",
    "SafetensorsLayout",
    "TensorEntry",
    "UnsupportedDtype",
    "parse_header",
    "parse_prefix",
]

PREFIX_LEN = 8  # little-endian u64 header length
_MAX_NAME_BYTES = 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset within the data region
    end: int


@dataclass(frozen=True)
class SafetensorsLayout:
    header_len: int  # prefix + JSON, i.e. where the data region starts in the file
    tensors: tuple[TensorEntry, ...]  # in data-region order
    metadata: dict[str, str]


class UnsupportedDtype(InputError):
    """A well-formed entry whose dtype secpack does not model: the packed sub-byte
    floats (F4, F6_E2M3, F6_E3M2), or a type safetensors adds later."""

    def __init__(self, name: str, dtype: str) -> None:
        super().__init__("input.safetensors", f"tensor {name!r} has dtype {dtype!r}")
        self.dtype = dtype


def _bad(why: str) -> InputError:
    return InputError("input.safetensors", why)


def parse_prefix(prefix: bytes, file_size: int, max_header: int) -> int:
    """Return the JSON header length declared by the first eight bytes."""
    if len(prefix) < PREFIX_LEN or file_size < PREFIX_LEN:
        raise _bad("file shorter than the 8-byte header length")
    if prefix[:PREFIX_LEN] == b"version ":
        # A Git LFS pointer ("version https://git-lfs...") checked out without
        # `git lfs pull`: as a header length these bytes are far out of range anyway.
        raise _bad("looks like a Git LFS pointer, not the weights (run `git lfs pull`)")
    n = int.from_bytes(prefix[:PREFIX_LEN], "little")
    if n < 2 or n > max_header:
        raise _bad(f"header length {n} out of range")
    if PREFIX_LEN + n > file_size:
        raise _bad("header runs past the end of the file")
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text: JSON's "\\ud800" escapes decode to lone
    surrogates, which no UTF-8 (a package's CBOR included) can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_constant(token: str) -> Any:
    raise _bad(f"JSON constant {token} is not allowed")


def parse_header(
    header: bytes, file_size: int, max_ndim: int, *, strict_text: bool = True
) -> SafetensorsLayout:
    """Validate the JSON header and the tensor layout against the file size.
    ``strict_text=False`` lets lone surrogates through in ``__metadata__`` (a
    reader's re-check of a header sealed before they were refused)."""
    if not header.startswith(b"{"):
        raise _bad("header does not start with '{'")
    try:
        text = header.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    # ValueError also covers an integer of more than 4300 digits, which Python's
    # JSON parser refuses to convert (and UnicodeDecodeError, JSONDecodeError).
    except (ValueError, RecursionError) as exc:
        raise _bad(f"header is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise _bad("header is not a JSON object")
    metadata: dict[str, str] = {}
    entries: list[TensorEntry] = []
    normalised: set[str] = set()
    for name, info in doc.items():
        if name == "__metadata__":
            # safetensors itself reads null as no metadata (its Rust type is an
            # Option), and real checkpoints carry it.
            if info is None:
                continue
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise _bad("__metadata__ must map strings to strings")
            if strict_text and not all(_is_text(k) and _is_text(v) for k, v in info.items()):
                raise _bad("__metadata__ holds a lone surrogate (\\ud800-\\udfff)")
            metadata = dict(info)
            continue
        if not _is_text(name):
            raise _bad(f"tensor name {name!r} holds a lone surrogate (\\ud800-\\udfff)")
        if not name or len(name.encode("utf-8")) > _MAX_NAME_BYTES:
            raise _bad("empty or over-long tensor name")
        key = unicodedata.normalize("NFC", name)
        if key in normalised:
            raise _bad(f"tensor name {name!r} duplicates another after NFC normalisation")
        normalised.add(key)
        entries.append(_parse_entry(name, info, max_ndim))

    data_len = file_size - PREFIX_LEN - len(header)
    # Zero-size tensors sort before a non-empty tensor at the same offset, so the
    # running-offset check accepts them only where they really sit.
    entries.sort(key=lambda e: (e.begin, e.end, e.name))
    cursor = 0
    for e in entries:
        if e.begin != cursor:
            what = "overlaps or aliases" if e.begin < cursor else "leaves a gap before"
            raise _bad(f"tensor {e.name!r} {what} the data at offset {cursor}")
        cursor = e.end
    if cursor != data_len:
        raise _bad(f"tensors cover {cursor} bytes but the data region holds {data_len}")
    return SafetensorsLayout(PREFIX_LEN + len(header), tuple(entries), metadata)


def _parse_entry(name: str, info: Any, max_ndim: int) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or not isinstance(shape, list):
        raise _bad(f"tensor {name!r} has a malformed dtype or shape")
    if dtype not in DTYPE_SIZES:
        raise UnsupportedDtype(name, dtype)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or any(type(o) is not int or o < 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(f"tensor {name!r} has malformed data_offsets")
    try:
        nbytes = checked_nbytes(dtype, shape, max_ndim)
    except TensorError as exc:
        raise _bad(f"tensor {name!r}: {exc.detail}") from None
    if nbytes != offsets[1] - offsets[0]:
        raise _bad(
            f"tensor {name!r}: shape and dtype give {nbytes} bytes, offsets give "
            f"{offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
