"""A reader for CTranslate2's ``model.bin``, standard library only.

Layout, as CTranslate2 writes it (python/ctranslate2/specs/model_spec.py, the
model serializer) and reads it (src/models/model.cc); every integer is
little-endian and a *string* is a uint16 byte count (the NUL included), the
UTF-8 bytes, then a NUL:

- uint32 binary version (6 today);
- version >= 2: the spec name (a string, e.g. ``WhisperSpec``) and a uint32 spec revision;
- uint32 variable count, then per variable: its name (a string), uint8 rank,
  ``rank`` uint32 dimensions, then (version >= 4) a uint8 dtype id and a uint32
  byte count, or (older) a uint8 item size and a uint32 element count; then the
  raw little-endian data;
- version >= 3: uint32 alias count, then per alias two strings (alias, target).

Vocabularies live in files of their own (``vocabulary.txt``, ...), not in model.bin.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CT2_DTYPES", "Ct2Model", "Ct2Variable", "read_ct2"]

# dtype ids: the order of CTranslate2's DataType enum (include/ctranslate2/types.h).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_ITEMSIZE = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "float16": 2, "bfloat16": 2}
# Before binary version 4 a variable gave its item size, not its dtype.
_BY_ITEMSIZE = {4: "float32", 2: "int16", 1: "int8"}
_MAX_VERSION = 6


@dataclass(frozen=True)
class Ct2Variable:
    name: str
    dtype: str  # one of CT2_DTYPES
    shape: tuple[int, ...]
    offset: int  # where the data starts in the file
    nbytes: int


@dataclass(frozen=True)
class Ct2Model:
    version: int
    spec: str
    revision: int
    variables: list[Ct2Variable]
    aliases: dict[str, str]


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"model.bin truncated: {n} bytes wanted at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return int(value)

    def string(self) -> str:
        n = self.unpack("H")
        if n == 0:
            raise ValueError(f"zero-length string at offset {self.pos - 2}")
        raw = self.take(n)
        if raw[-1] != 0:
            raise ValueError(f"string at offset {self.pos - n} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2(path: Path) -> tuple[Ct2Model, bytes]:
    """Parse ``path``; the model's description and the file's bytes."""
    data = path.read_bytes()
    cur = _Cursor(data)
    version = cur.unpack("I")
    if not 1 <= version <= _MAX_VERSION:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string()
        revision = cur.unpack("I")
    variables: list[Ct2Variable] = []
    for _ in range(cur.unpack("I")):
        name = cur.string()
        rank = cur.unpack("B")
        shape = tuple(cur.unpack("I") for _ in range(rank))
        if version >= 4:
            type_id = cur.unpack("B")
            if type_id >= len(CT2_DTYPES):
                raise ValueError(f"{name}: unknown dtype id {type_id}")
            dtype = CT2_DTYPES[type_id]
            nbytes = cur.unpack("I")
        else:
            item = cur.unpack("B")
            dtype = _BY_ITEMSIZE.get(item, "")
            if not dtype:
                raise ValueError(f"{name}: unknown item size {item}")
            nbytes = cur.unpack("I") * item
        count = 1
        for d in shape:
            count *= d
        if nbytes != count * _ITEMSIZE[dtype]:
            raise ValueError(f"{name}: {nbytes} bytes for shape {shape} of {dtype}")
        variables.append(Ct2Variable(name, dtype, shape, cur.pos, nbytes))
        cur.take(nbytes)
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cur.unpack("I")):
            alias = cur.string()
            aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise ValueError(f"{len(data) - cur.pos} trailing bytes after the aliases")
    return Ct2Model(version, spec, revision, variables, aliases), data
