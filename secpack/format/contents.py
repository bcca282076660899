"""A component's contents: its files and tensor table (docs/FORMAT.md, "Contents").

The contents are encrypted with the component when it is encrypted, so file
names and the tensor table stay confidential. They are validated against the
component's public segment list before anything is written or decoded.
"""

from __future__ import annotations

import bisect
import dataclasses
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from secpack.errors import SchemaError, TensorError
from secpack.format.limits import Limits
from secpack.format.paths import collision_key, path_problem
from secpack.format.schema import as_list, as_map, as_text, as_uint, fail
from secpack.tensors.dtypes import DTYPE_SIZES, checked_nbytes

__all__ = ["Contents", "FileEntry", "TensorRecord", "Unit", "parse_contents"]

FORMAT_RAW = "raw"
FORMAT_SAFETENSORS = "safetensors"
# Permission bits only: no setuid, setgid or sticky bit ever travels in a package.
MODE_MASK = 0o777


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mode: int
    format: str
    first: int  # first segment index (within the component)
    count: int  # number of segments
    header: int = 0  # safetensors: bytes before the data region (8-byte prefix + JSON)
    # Derived from the list (parse_contents, or the writer's plan), never stored:
    # whether the file is a member of a file run (several small raw files sharing
    # one segment, docs/FORMAT.md §5), and how many bytes of that segment come
    # before it.
    run: bool = False
    skip: int = 0

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "format": self.format,
            "segments": [self.first, self.count],
        }
        if self.format == FORMAT_SAFETENSORS:
            out["header"] = self.header
        return out


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: int  # index into Contents.files
    offset: int  # absolute byte offset within that file
    length: int
    first: int
    count: int
    # Derived from the table (parse_contents, or the writer's plan), never stored:
    # whether the tensor is a member of a run (several small tensors sharing one
    # segment, docs/FORMAT.md §5), and how many bytes of that segment come before it.
    run: bool = False
    skip: int = 0

    def to_cbor(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "file": self.file,
            "offset": self.offset,
            "length": self.length,
            "segments": [self.first, self.count],
        }


@dataclass(frozen=True)
class Unit:
    """What one segment belongs to; bound into its AEAD associated data."""

    label: tuple[str, str]  # ("file"|"file-run"|"header", path), ("tensor"|"run", name)
    part: int  # index of the segment within its unit
    last: bool  # whether it is the unit's final segment


@dataclass(frozen=True)
class Contents:
    files: tuple[FileEntry, ...]
    tensors: tuple[TensorRecord, ...]

    def to_cbor(self) -> dict[str, Any]:
        return {
            "files": [f.to_cbor() for f in self.files],
            "tensors": [t.to_cbor() for t in self.tensors],
        }

    def units(self) -> list[Unit]:
        """The unit of every segment, in segment order."""
        out: list[Unit] = []

        def add(label: tuple[str, str], count: int) -> None:
            out.extend(Unit(label, i, i == count - 1) for i in range(count))

        by_file: dict[int, list[TensorRecord]] = {}
        for t in self.tensors:
            by_file.setdefault(t.file, []).append(t)
        for index, f in enumerate(self.files):
            if f.format == FORMAT_RAW:
                if not f.run:
                    add(("file", f.path), f.count)
                elif not f.skip:  # a file run's unit is named after its first file
                    add(("file-run", f.path), 1)
                continue
            tensors = by_file.get(index, [])
            header_count = f.count - sum(t.count for t in tensors if not t.skip)
            add(("header", f.path), header_count)
            for t in tensors:
                if not t.run:
                    add(("tensor", t.name), t.count)
                elif not t.skip:  # a run's unit is named after its first tensor
                    add(("run", t.name), 1)
        return out


def _range(value: Any, where: str) -> tuple[int, int]:
    pair = as_list(value, where, 2, 2)
    return as_uint(pair[0], f"{where}[0]"), as_uint(pair[1], f"{where}[1]")


def parse_contents(obj: Any, plains: Sequence[int], limits: Limits) -> Contents:
    """Validate decoded contents against the component's segment plaintext lengths."""
    c = as_map(obj, "contents", ("files", "tensors"))
    files = tuple(
        _parse_file(f, f"contents.files[{i}]", limits)
        for i, f in enumerate(as_list(c["files"], "contents.files", limits.max_files))
    )
    tensors = tuple(
        _parse_tensor(t, f"contents.tensors[{i}]", limits)
        for i, t in enumerate(as_list(c["tensors"], "contents.tensors", limits.max_tensors))
    )
    _check_paths(files)
    files = _check_tiling(files, plains)
    return Contents(files, _check_tensors(files, tensors, plains))


def _joins_run(prev: FileEntry, f: FileEntry) -> bool:
    """Whether ``f`` continues the file run (or the one-segment raw file) ``prev``:
    both raw, not empty, and naming the same one segment."""
    return (
        prev.format == f.format == FORMAT_RAW
        and prev.count == f.count == 1
        and prev.first == f.first
        and prev.size > 0
        and f.size > 0
    )


def _check_tiling(files: tuple[FileEntry, ...], plains: Sequence[int]) -> tuple[FileEntry, ...]:
    """Files tile the segment list: in order, back to back, with nothing left over;
    a file run's members share their one segment, whose plaintext is exactly their
    bytes back to back. Returns the files with their run fields."""
    # Units of the file list: each a list of file indices, a run where it has two
    # or more (a file with one segment opens a group, the next ones naming the
    # same segment join it).
    groups: list[list[int]] = []
    for i, f in enumerate(files):
        if groups and _joins_run(files[groups[-1][-1]], f):
            groups[-1].append(i)
        else:
            groups.append([i])
    cursor = 0
    out = list(files)
    for group in groups:
        i = group[0]
        f = files[i]
        if f.first != cursor:
            raise fail(f"contents.files[{i}].segments", "not contiguous with the previous file")
        cursor = f.first + f.count
        if cursor > len(plains):
            raise fail(f"contents.files[{i}].segments", "past the component's segments")
        if len(group) == 1:
            if sum(plains[f.first : cursor]) != f.size:
                raise fail(f"contents.files[{i}].size", "does not equal its segments")
            continue
        if plains[f.first] != sum(files[k].size for k in group):
            raise fail(f"contents.files[{i}].size", "a file run does not equal its segment")
        skip = 0
        for k in group:
            out[k] = dataclasses.replace(files[k], run=True, skip=skip)
            skip += files[k].size
    if cursor != len(plains):
        raise fail("contents.files", "segments not covered by any file")
    return tuple(out)


def _check_paths(files: tuple[FileEntry, ...]) -> None:
    check_paths(f.path for f in files)


def check_dir_count(dirs: int, limits: Limits) -> None:
    """Refuse to create more directories than ``max_dirs`` (§11)."""
    if dirs > limits.max_dirs:
        raise SchemaError(
            "schema.invalid",
            f"{dirs} directories, more than {limits.max_dirs} (a policy's [limits] max_dirs "
            "raises it)",
        )


def check_paths(paths: Iterable[str]) -> int:
    """Refuse two paths that collide (§10) or a file path that is also a directory
    of another; return how many directories writing the paths creates.

    Works on sorted strings alone, so that memory stays near the paths' own
    bytes: a node per directory took 1.2 GB for 100 000 files at the bottom of
    chains 64 deep (a package of 106 KB). The strings under a directory ``d`` are
    the ones that start with ``d/``, which sort together: the first key at or
    after ``k/`` says whether file ``k`` is also a directory, and a path's
    directories that the path before it does not share are new ones. The clash
    is found on collision keys (``A/x`` and ``a`` clash on a case-insensitive file
    system); the count is of the paths as written (``A/`` and ``a/`` are two
    directories where case matters)."""
    seen: dict[str, str] = {}
    for path in paths:
        key = collision_key(path)
        if key in seen:
            raise SchemaError("schema.invalid", f"paths {seen[key]!r} and {path!r} collide")
        seen[key] = path
    keys = sorted(seen)
    for i, key in enumerate(keys):
        under = bisect.bisect_left(keys, key + "/", i + 1)
        if under < len(keys) and keys[under].startswith(key + "/"):
            raise SchemaError("schema.invalid", f"{seen[key]!r} is both a file and a directory")
    del keys
    dirs = 0
    before: list[str] = []  # the directories of the path before
    for path in sorted(seen.values()):
        parents = path.split("/")[:-1]
        shared = 0
        for mine, theirs in zip(parents, before, strict=False):
            if mine != theirs:
                break
            shared += 1
        dirs += len(parents) - shared
        before = parents
    return dirs


def _check_tensors(
    files: tuple[FileEntry, ...], tensors: tuple[TensorRecord, ...], plains: Sequence[int]
) -> tuple[TensorRecord, ...]:
    """Check the tensor rules of §5 and return the records with their run fields."""
    names: set[str] = set()
    by_file: dict[int, list[int]] = {}
    for i, t in enumerate(tensors):
        key = unicodedata.normalize("NFC", t.name)
        if key in names:
            raise TensorError("tensor.invalid", f"duplicate tensor name {t.name!r}")
        names.add(key)
        if t.file >= len(files) or files[t.file].format != FORMAT_SAFETENSORS:
            raise TensorError("tensor.invalid", f"tensors[{i}] points at a non-tensor file")
        by_file.setdefault(t.file, []).append(i)
    checked: dict[int, TensorRecord] = {}
    for index, f in enumerate(files):
        if f.format != FORMAT_SAFETENSORS:
            continue
        group = by_file.get(index, [])
        # The header occupies the file's first segments, then tensors follow in order.
        seg = f.first
        offset = 0
        while offset < f.header:
            if seg >= f.first + f.count:
                raise TensorError("tensor.invalid", f"{f.path}: header runs past its segments")
            offset += plains[seg]
            seg += 1
        if offset != f.header:
            raise TensorError("tensor.invalid", f"{f.path}: header does not end on a segment")
        # A run: consecutive tensors that all name the same one segment, [s, 1],
        # whose plaintext is exactly their bytes back to back. A tensor with one
        # segment opens a run, the next ones with the same join it; each closed
        # run (its member indices, start offset, end offset) is checked below.
        runs: list[tuple[list[int], int, int]] = []
        run: list[int] = []
        run_start = 0
        for k in group:
            t = tensors[k]
            if t.offset != offset:
                raise TensorError("tensor.invalid", f"tensor {t.name!r} is aliased or out of order")
            if t.count and not t.length:
                raise TensorError("tensor.invalid", f"tensor {t.name!r} is empty but has segments")
            if run and t.count == 1 and t.first == tensors[run[0]].first:
                run.append(k)  # the open run goes on
            else:
                if run:
                    runs.append((run, run_start, offset))
                    run = []
                if t.first != seg:
                    raise TensorError(
                        "tensor.invalid", f"tensor {t.name!r} is aliased or out of order"
                    )
                if t.first + t.count > f.first + f.count:
                    raise TensorError("tensor.invalid", f"tensor {t.name!r} runs past its file")
                if t.count == 1:
                    run, run_start = [k], offset
                elif sum(plains[t.first : t.first + t.count]) != t.length:
                    raise TensorError("tensor.invalid", f"tensor {t.name!r} length disagrees")
                seg += t.count
            offset += t.length
        if run:
            runs.append((run, run_start, offset))
        for members, start, end in runs:
            head = tensors[members[0]]
            if plains[head.first] != end - start:
                what = "run at" if len(members) > 1 else "tensor"
                raise TensorError("tensor.invalid", f"{what} {head.name!r}: length disagrees")
            for k in members if len(members) > 1 else ():
                t = tensors[k]
                checked[k] = dataclasses.replace(t, run=True, skip=t.offset - start)
        if seg != f.first + f.count or offset != f.size:
            raise TensorError("tensor.invalid", f"{f.path}: tensors leave bytes unaccounted for")
    # A run is in a row of the whole table, not only of its file's tensors: a
    # reader may take the table's order as the order to decode in.
    for k, t in checked.items():
        if t.skip and (tensors[k - 1].file != t.file or tensors[k - 1].first != t.first):
            raise TensorError("tensor.invalid", f"tensor {t.name!r} is apart from its run")
    return tuple(checked.get(k, t) for k, t in enumerate(tensors))


def _parse_file(obj: Any, where: str, limits: Limits) -> FileEntry:
    f = as_map(obj, where, ("path", "size", "mode", "format", "segments"), ("header",))
    path = as_text(f["path"], f"{where}.path", limits.max_path_bytes)
    problem = path_problem(path, limits.max_path_bytes)
    if problem:
        raise SchemaError("schema.invalid", f"{where}.path {path!r}: {problem}")
    fmt = as_text(f["format"], f"{where}.format", 32)
    if fmt not in (FORMAT_RAW, FORMAT_SAFETENSORS):
        raise SchemaError("schema.unsupported", f"{where}: file format {fmt!r}")
    if (fmt == FORMAT_SAFETENSORS) != ("header" in f):
        raise fail(where, "header is required for safetensors files and only for them")
    first, count = _range(f["segments"], f"{where}.segments")
    size = as_uint(f["size"], f"{where}.size", 0, limits.max_total_plain)
    header = as_uint(f["header"], f"{where}.header", 10, size) if "header" in f else 0
    return FileEntry(
        path=path,
        size=size,
        mode=as_uint(f["mode"], f"{where}.mode", 0, MODE_MASK),
        format=fmt,
        first=first,
        count=count,
        header=header,
    )


def _parse_tensor(obj: Any, where: str, limits: Limits) -> TensorRecord:
    t = as_map(obj, where, ("name", "dtype", "shape", "file", "offset", "length", "segments"))
    name = as_text(t["name"], f"{where}.name", 1024)
    if not name:
        raise TensorError("tensor.invalid", f"{where}: empty tensor name")
    if name == "__metadata__":
        # safetensors' key for the file's metadata: no file can hold such a tensor,
        # and export_safetensors would write one that no reader accepts.
        raise TensorError("tensor.invalid", f"{where}: a tensor cannot be named __metadata__")
    dtype = as_text(t["dtype"], f"{where}.dtype", 16)
    if dtype not in DTYPE_SIZES:
        raise TensorError("tensor.invalid", f"{where}: dtype {dtype!r} is not supported")
    shape_raw = t["shape"]
    if type(shape_raw) is not list:
        raise TensorError("tensor.invalid", f"{where}.shape: expected an array")
    shape = tuple(shape_raw)
    length = as_uint(t["length"], f"{where}.length", 0, limits.max_total_plain)
    if checked_nbytes(dtype, shape, limits.max_tensor_ndim) != length:
        raise TensorError("tensor.invalid", f"{where}: prod(shape) * itemsize != length")
    first, count = _range(t["segments"], f"{where}.segments")
    return TensorRecord(
        name=name,
        dtype=dtype,
        shape=shape,
        file=as_uint(t["file"], f"{where}.file"),
        offset=as_uint(t["offset"], f"{where}.offset"),
        length=length,
        first=first,
        count=count,
    )
