"""Workloads that ``bench/run.py`` runs each in a process of its own, so that
start-up and imports count and peak RSS is the child's alone.

Usage: python bench/children.py zstd-compress DIR OUT [LEVEL] [THREADS]
       python bench/children.py safetensors-load DIR
       python bench/children.py safetensors-state-dict DIR
       python bench/children.py secpack-state-dict PKG IDENTITY TRUST
       python bench/children.py secpack-tensor PKG IDENTITY TRUST NAME
       python bench/children.py secpack-tensors PKG IDENTITY TRUST
       python bench/children.py secpack-stream PKG IDENTITY TRUST

Each prints one JSON object: ``seconds`` (in-process, after imports are done),
``bytes_in`` and, where it applies, ``bytes_out`` or ``skipped``. The loader
workloads also report ``import_s``, ``open_s``, the load's own time and
``bytes_read`` (the package bytes secpack read).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from shards import numpy_shards

_CHUNK = 4 << 20
# Component kinds that hold tensors: the ones secpack's loader decodes as tensors.
_TENSOR_KINDS = ("weights", "adapter")


def _files(root: Path) -> list[Path]:
    """Regular files under ``root`` in a stable order, like ``tar`` would read them."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def zstd_compress(root: Path, out: Path, level: int, threads: int) -> dict[str, object]:
    """Stream every file of ``root``, concatenated, through one zstd frame: a
    ``tar | zstd -LEVEL -T<threads>`` proxy without tar's 512-byte headers."""
    import zstandard

    started = time.perf_counter()
    cctx = zstandard.ZstdCompressor(level=level, threads=threads)
    bytes_in = 0
    with out.open("wb") as sink, cctx.stream_writer(sink, closefd=False) as writer:
        for path in _files(root):
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    writer.write(chunk)
                    bytes_in += len(chunk)
    return {
        "seconds": time.perf_counter() - started,
        "bytes_in": bytes_in,
        "bytes_out": out.stat().st_size,
    }


def safetensors_load(root: Path, keep: bool) -> dict[str, object]:
    """``safetensors.numpy.load_file`` on every shard numpy can represent.

    numpy has no bfloat16 without ml_dtypes, so shards holding BF16 tensors are
    skipped (and reported) rather than failing the whole measurement. With
    ``keep`` every array stays in memory until the end, like a state dict.
    """
    began = time.perf_counter()
    from safetensors.numpy import load_file

    started = time.perf_counter()
    loadable, skipped = numpy_shards(root)
    loaded = 0
    tensors = 0
    kept: list[dict[str, Any]] = []
    for path in loadable:
        arrays = load_file(str(path))  # copies every tensor out of the file into numpy
        loaded += sum(a.nbytes for a in arrays.values())
        tensors += len(arrays)
        if keep:
            kept.append(arrays)
        del arrays
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "import_s": started - began,
        "load_s": seconds,
        "bytes_in": loaded,
        "decoded_bytes": loaded,
        "tensors": tensors,
        "skipped": [p.name for p in skipped],
    }


def _open(pkg: Path, identity: Path, trust: Path) -> tuple[Any, float, float]:
    """Import secpack's loader, then open and trust ``pkg``: (package, import s, open s)."""
    began = time.perf_counter()
    import numpy  # noqa: F401  (secpack imports it lazily: count it as an import)

    import secpack
    from secpack.api import loader  # noqa: F401  (the lazy attribute, imported now)

    opened = time.perf_counter()
    package = secpack.open_package(pkg, identity=identity, trust=[trust])
    return package, opened - began, time.perf_counter() - opened


def secpack_state_dict(pkg: Path, identity: Path, trust: Path) -> dict[str, object]:
    """``state_dict`` of every tensor component, all arrays kept until the end."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        package, import_s, open_s = _open(pkg, identity, trust)
        after_open = package.bytes_read
        started = time.perf_counter()
        loaded = {
            c.name: package.state_dict(c.name)
            for c in package.components
            if c.kind in _TENSOR_KINDS
        }
        load_s = time.perf_counter() - started
    decoded = sum(a.nbytes for sd in loaded.values() for a in sd.values())
    result = {
        "seconds": open_s + load_s,
        "import_s": import_s,
        "open_s": open_s,
        "load_s": load_s,
        "decoded_bytes": decoded,
        "tensors": sum(len(sd) for sd in loaded.values()),
        "components": sorted(loaded),
        "bytes_read_open": after_open,
        "bytes_read": package.bytes_read,
        "package_bytes": os.path.getsize(pkg),
        "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
    }
    package.close()
    return result


def secpack_stream(pkg: Path, identity: Path, trust: Path) -> dict[str, object]:
    """``iter_tensors`` over every tensor component, each array dropped once seen:
    a loader that hands tensors on (to a device) one at a time, and the same work
    as the codec peers' decompression, whose outputs are not kept either."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        package, import_s, open_s = _open(pkg, identity, trust)
        started = time.perf_counter()
        decoded = tensors = 0
        for c in package.components:
            if c.kind in _TENSOR_KINDS:
                for _name, array in package.iter_tensors(c.name):
                    decoded += array.nbytes
                    tensors += 1
        load_s = time.perf_counter() - started
    package.close()
    return {
        "seconds": open_s + load_s,
        "import_s": import_s,
        "open_s": open_s,
        "load_s": load_s,
        "decoded_bytes": decoded,
        "tensors": tensors,
    }


def secpack_tensor(pkg: Path, identity: Path, trust: Path, name: str) -> dict[str, object]:
    """One tensor, after open_package; each step timed on its own."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        package, import_s, open_s = _open(pkg, identity, trust)
        after_open = package.bytes_read
        started = time.perf_counter()
        array = package.tensor(name)
        tensor_s = time.perf_counter() - started
    result = {
        "seconds": open_s + tensor_s,
        "import_s": import_s,
        "open_s": open_s,
        "load_s": tensor_s,
        "decoded_bytes": array.nbytes,
        "bytes_read_open": after_open,
        "bytes_read": package.bytes_read,
        "package_bytes": os.path.getsize(pkg),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
    }
    package.close()
    return result


def secpack_tensors(pkg: Path, identity: Path, trust: Path) -> dict[str, object]:
    """The tensor records of every tensor component (no tensor is decoded)."""
    package, _, _ = _open(pkg, identity, trust)
    tensors = [
        {"name": r.name, "dtype": r.dtype, "shape": list(r.shape), "length": r.length}
        for c in package.components
        if c.kind in _TENSOR_KINDS
        for r in (package.tensor_info(n, c.name) for n in package.tensor_names(c.name))
    ]
    package.close()
    import secpack

    return {
        "tensors": tensors,
        "package_bytes": os.path.getsize(pkg),
        "secpack_file": secpack.__file__,
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    verb, root = argv[0], Path(argv[1])
    result: dict[str, object]
    if verb == "zstd-compress":
        level = int(argv[3]) if len(argv) > 3 else 3
        threads = int(argv[4]) if len(argv) > 4 else 2
        result = zstd_compress(root, Path(argv[2]), level, threads)
    elif verb in ("safetensors-load", "safetensors-state-dict"):
        result = safetensors_load(root, keep=verb == "safetensors-state-dict")
    elif verb == "secpack-state-dict" and len(argv) == 4:
        result = secpack_state_dict(root, Path(argv[2]), Path(argv[3]))
    elif verb == "secpack-tensor" and len(argv) == 5:
        result = secpack_tensor(root, Path(argv[2]), Path(argv[3]), argv[4])
    elif verb == "secpack-stream" and len(argv) == 4:
        result = secpack_stream(root, Path(argv[2]), Path(argv[3]))
    elif verb == "secpack-tensors" and len(argv) == 4:
        result = secpack_tensors(root, Path(argv[2]), Path(argv[3]))
    else:
        sys.stderr.write(f"unknown workload or wrong arguments: {' '.join(argv)!r}\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
