"""Python anchor workloads, each run by ``bench/run.py`` in a process of its own so
that start-up and imports count and peak RSS is the child's alone.

Usage: python bench/children.py zstd-compress DIR OUT [LEVEL] [THREADS]
       python bench/children.py safetensors-load DIR

Each prints one JSON object: ``seconds`` (in-process, after imports are done),
``bytes_in`` and, where it applies, ``bytes_out`` or ``skipped``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_CHUNK = 4 << 20


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


def safetensors_load(root: Path) -> dict[str, object]:
    """``safetensors.numpy.load_file`` on every shard numpy can represent.

    numpy has no bfloat16 without ml_dtypes, so shards holding BF16 tensors are
    skipped (and reported) rather than failing the whole measurement.
    """
    import json as _json
    import struct

    from safetensors.numpy import load_file

    started = time.perf_counter()
    loaded = 0
    tensors = 0
    skipped: list[str] = []
    for path in _files(root):
        if path.suffix != ".safetensors":
            continue
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = _json.loads(f.read(n))
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
        if "BF16" in dtypes:
            skipped.append(path.name)
            continue
        arrays = load_file(str(path))  # copies every tensor out of the file into numpy
        loaded += sum(a.nbytes for a in arrays.values())
        tensors += len(arrays)
        del arrays
    return {
        "seconds": time.perf_counter() - started,
        "bytes_in": loaded,
        "tensors": tensors,
        "skipped": skipped,
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    verb, root = argv[0], Path(argv[1])
    if verb == "zstd-compress":
        level = int(argv[3]) if len(argv) > 3 else 3
        threads = int(argv[4]) if len(argv) > 4 else 2
        result = zstd_compress(root, Path(argv[2]), level, threads)
    elif verb == "safetensors-load":
        result = safetensors_load(root)
    else:
        sys.stderr.write(f"unknown workload {verb!r}\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
