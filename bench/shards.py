"""safetensors headers, read with the standard library only: children.py imports
this too, and a child must not pay for the harness's imports."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NUMPY_DTYPES", "ShardTensor", "numpy_shards", "shard_tensors", "shards"]

# safetensors dtypes that numpy represents natively (safetensors.numpy refuses the
# rest, BF16 and the F8 types, unless ml_dtypes is installed).
NUMPY_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "I64", "U64", "F64"}
)


@dataclass(frozen=True)
class ShardTensor:
    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets of the tensor's bytes
    end: int


def shards(root: Path) -> list[Path]:
    """The safetensors files under ``root``, in a stable order."""
    return sorted(p for p in root.rglob("*.safetensors") if p.is_file() and not p.is_symlink())


def shard_tensors(path: Path) -> list[ShardTensor]:
    """The tensors of one safetensors file, from its header."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [
        ShardTensor(
            path,
            name,
            v["dtype"],
            tuple(v["shape"]),
            8 + n + v["data_offsets"][0],
            8 + n + v["data_offsets"][1],
        )
        for name, v in header.items()
        if name != "__metadata__"
    ]


def numpy_shards(root: Path) -> tuple[list[Path], list[Path]]:
    """The safetensors files under ``root`` that numpy can load, and the others."""
    loadable: list[Path] = []
    skipped: list[Path] = []
    for path in shards(root):
        dtypes = {t.dtype for t in shard_tensors(path)}
        (loadable if dtypes <= NUMPY_DTYPES else skipped).append(path)
    return loadable, skipped
