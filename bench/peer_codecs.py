"""The compression peers, each run as a process of its own: plain zstd (python
zstandard) at a given level, and ZipNN's byte-level API.

Usage: python bench/peer_codecs.py compress CODEC DIR OUT THREADS   (CODEC: zstd-N or zipnn)
       python bench/peer_codecs.py decompress IN THREADS

Memory to memory, like for like: each file of DIR is read whole (not timed), then
compressed (timed); the output is written (not timed) to one container file:
the compressed segments back to back, then a JSON index, its uint64 length and
``ZNNB``. ``seconds`` is the compression time alone; decompression likewise
times only the codec calls (reading the container is not timed). Both print the
sha256 of the original bytes (the files concatenated in order), so the harness
can check the round trip.

- zstd-N: one frame per file at level N, ``threads`` workers.
- zipnn: each safetensors file is cut into its JSON header and runs of adjacent
  tensors of one dtype. F32 / BF16 / F16 runs go to ``ZipNN(method="zstd",
  input_format="byte", bytearray_dtype=..., threads=...)``; the header, other
  dtypes and every other file to zstd-3. ZipNN rewrites fp32 / bf16 input in
  place, so it gets a copy of each run (the copy is made before the timer starts).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from shards import shard_tensors

_MAGIC = b"ZNNB"
_ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_SIDE_LEVEL = 3  # zstd level for what ZipNN does not take (headers, ints, other files)

Segment = tuple[str, int, int]  # codec ("zstd" or a ZipNN bytearray_dtype), start, end


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _segments(path: Path, size: int, zipnn: bool) -> list[Segment]:
    """How one file is cut: whole for zstd; header + dtype runs for ZipNN."""
    if not zipnn or path.suffix != ".safetensors":
        return [("zstd", 0, size)]
    out: list[Segment] = []
    pos = 0
    for t in sorted(shard_tensors(path), key=lambda t: t.start):
        codec = _ZIPNN_DTYPES.get(t.dtype, "zstd")
        if t.start > pos:
            out.append(("zstd", pos, t.start))  # the header, or a gap
        if out and out[-1][0] == codec and out[-1][2] == t.start:
            out[-1] = (codec, out[-1][1], t.end)
        elif t.end > t.start:
            out.append((codec, t.start, t.end))
        pos = max(pos, t.end)
    if pos < size:
        out.append(("zstd", pos, size))
    return out


class _Codecs:
    """Compressors and decompressors, made once per process."""

    def __init__(self, threads: int, level: int) -> None:
        import zstandard

        self.threads = threads
        self.cz = zstandard.ZstdCompressor(level=level, threads=threads)
        self.dz = zstandard.ZstdDecompressor()
        self.zipnn: dict[str, Any] = {}

    def zipnn_for(self, dtype: str) -> Any:
        if dtype not in self.zipnn:
            zipnn = importlib.import_module("zipnn")  # untyped; it imports torch
            self.zipnn[dtype] = zipnn.ZipNN(
                method="zstd", input_format="byte", bytearray_dtype=dtype, threads=self.threads
            )
        return self.zipnn[dtype]


def compress(codec: str, root: Path, out: Path, threads: int) -> dict[str, object]:
    began = time.perf_counter()
    zipnn = codec == "zipnn"
    level = _SIDE_LEVEL if zipnn else int(codec.removeprefix("zstd-"))
    codecs = _Codecs(threads, level)
    if zipnn:
        codecs.zipnn_for("float32")  # import zipnn (and torch) before the clock starts
    import_s = time.perf_counter() - began
    digest = hashlib.sha256()
    index: list[dict[str, object]] = []
    seconds = 0.0
    bytes_in = 0
    with out.open("wb") as sink:
        for path in _files(root):
            data = path.read_bytes()
            digest.update(data)
            bytes_in += len(data)
            segs: list[list[object]] = []
            for kind, start, end in _segments(path, len(data), zipnn):
                if kind == "zstd":
                    view = memoryview(data)[start:end]
                    t0 = time.perf_counter()
                    blob = codecs.cz.compress(view)
                else:
                    copy = bytearray(data[start:end])  # ZipNN writes into its input
                    t0 = time.perf_counter()
                    blob = codecs.zipnn_for(kind).compress(copy)
                seconds += time.perf_counter() - t0
                sink.write(blob)
                segs.append([kind, end - start, len(blob)])
            index.append({"path": str(path.relative_to(root)), "size": len(data), "segs": segs})
        raw = json.dumps(index).encode()
        sink.write(raw + struct.pack("<Q", len(raw)) + _MAGIC)
    return {
        "seconds": seconds,
        "import_s": import_s,
        "bytes_in": bytes_in,
        "bytes_out": out.stat().st_size,
        "sha256": digest.hexdigest(),
    }


def decompress(src: Path, threads: int) -> dict[str, object]:
    began = time.perf_counter()
    with src.open("rb") as f:
        f.seek(-12, 2)
        tail = f.read(12)
        if tail[8:] != _MAGIC:
            raise ValueError(f"{src}: not a bench/peer_codecs.py container")
        (n,) = struct.unpack("<Q", tail[:8])
        f.seek(-12 - n, 2)
        index = json.loads(f.read(n))
        f.seek(0)
        kinds = {s[0] for entry in index for s in entry["segs"]}
        codecs = _Codecs(threads, _SIDE_LEVEL)
        for kind in kinds - {"zstd"}:
            codecs.zipnn_for(kind)
        import_s = time.perf_counter() - began
        digest = hashlib.sha256()
        seconds = 0.0
        bytes_out = 0
        for entry in index:
            for kind, raw_len, comp_len in entry["segs"]:
                blob = f.read(comp_len)
                t0 = time.perf_counter()
                if kind == "zstd":
                    plain = codecs.dz.decompress(blob, max_output_size=raw_len)
                else:
                    plain = codecs.zipnn_for(kind).decompress(blob)
                seconds += time.perf_counter() - t0
                if len(plain) != raw_len:
                    raise ValueError(f"{entry['path']}: a segment came back {len(plain)} bytes")
                digest.update(plain)
                bytes_out += len(plain)
    return {
        "seconds": seconds,
        "import_s": import_s,
        "bytes_in": src.stat().st_size,
        "bytes_out": bytes_out,
        "sha256": digest.hexdigest(),
    }


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")  # torch's deprecation warnings, via zipnn
    if len(argv) == 5 and argv[0] == "compress":
        result = compress(argv[1], Path(argv[2]), Path(argv[3]), int(argv[4]))
    elif len(argv) == 3 and argv[0] == "decompress":
        result = decompress(Path(argv[1]), int(argv[2]))
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
