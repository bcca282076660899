"""The peer comparison's converted data sets, written once under bench/out/data.

Usage: python bench/convert.py minilm SOURCE_DIR ROOT   (fp32 weights -> fp32, bf16, fp16)
       python bench/convert.py whisper MODEL_BIN ROOT   (CTranslate2 fp16 -> safetensors)

Runs as a process of its own (``bench/peer_data.py`` starts it), so that the
conversion's memory never counts against the harness. Prints one JSON object:
``datasets``, each with ``name``, ``path`` and ``notes``.

- MiniLM: the fp32 ``model.safetensors`` is linked as it is; the bf16 copy takes
  the top 16 bits of each fp32 with round-to-nearest-even (NaN kept quiet), the
  fp16 copy is numpy's ``astype(float16)`` (also round-to-nearest-even). Integer
  tensors (``position_ids``) are kept as they are. numpy has no bfloat16, so the
  safetensors files are written by hand: an 8-byte header length, the JSON header
  padded with spaces to a multiple of 8, then the tensors back to back.
- Whisper tiny.en: every float16 variable of the CTranslate2 ``model.bin``
  (``ct2.py``), in file order; the other dtypes (scalar settings) are skipped and
  listed in the notes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from ct2 import read_ct2
from shards import shard_tensors

__all__ = ["bf16_bits", "write_safetensors"]

# Bump when a conversion changes, so cached files are rebuilt.
CONVERT_VERSION = 1
_STAMP = ".bench-convert.json"

Tensor = tuple[str, str, tuple[int, ...], bytes]  # name, safetensors dtype, shape, data


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """fp32 -> bfloat16 bit patterns (uint16), rounding to nearest, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    # Wraps only for u >= 0xFFFF8000, which are NaNs, replaced below.
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def write_safetensors(path: Path, tensors: list[Tensor], metadata: dict[str, str]) -> None:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, _, data in tensors:
            f.write(data)
    tmp.replace(path)


def _stamp_path(out: Path) -> Path:
    # Beside the directory, not in it: every file in it is measured.
    return out.with_name(out.name + _STAMP)


def _fresh(out: Path, source: Path) -> bool:
    stamp = _stamp_path(out)
    if not (out / "model.safetensors").is_file():
        return False
    if not stamp.is_file():
        return False
    want = {"version": CONVERT_VERSION, "source_bytes": source.stat().st_size}
    return bool(json.loads(stamp.read_text()) == want)


def _stamp(out: Path, source: Path) -> None:
    want = {"version": CONVERT_VERSION, "source_bytes": source.stat().st_size}
    _stamp_path(out).write_text(json.dumps(want))


def _prepare(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def minilm(source_dir: Path, root: Path) -> list[dict[str, object]]:
    src = source_dir / "model.safetensors"
    made: list[dict[str, object]] = []
    entries = shard_tensors(src)
    blob = src.read_bytes()
    for variant in ("fp32", "bf16", "fp16"):
        out = root / f"minilm-{variant}"
        notes: list[str] = []
        if not _fresh(out, src):
            _prepare(out)
            if variant == "fp32":
                try:
                    os.link(src, out / "model.safetensors")
                except OSError:
                    shutil.copyfile(src, out / "model.safetensors")
            else:
                tensors: list[Tensor] = []
                overflow = 0
                for t in sorted(entries, key=lambda e: e.start):
                    data = blob[t.start : t.end]
                    if t.dtype != "F32":
                        tensors.append((t.name, t.dtype, t.shape, data))
                        continue
                    a = np.frombuffer(data, dtype="<f4")
                    if variant == "bf16":
                        tensors.append((t.name, "BF16", t.shape, bf16_bits(a).tobytes()))
                    else:
                        h = a.astype(np.float16)
                        overflow += int(np.count_nonzero(np.isinf(h) & np.isfinite(a)))
                        tensors.append((t.name, "F16", t.shape, h.tobytes()))
                if overflow:
                    notes.append(f"{overflow} fp32 values overflowed to inf in fp16")
                meta = {"format": "pt", "converted_from": "all-MiniLM-L6-v2 fp32"}
                write_safetensors(out / "model.safetensors", tensors, meta)
            _stamp(out, src)
        made.append({"name": f"minilm-{variant}", "path": str(out), "notes": notes})
    return made


def whisper(model_bin: Path, root: Path) -> list[dict[str, object]]:
    out = root / "whisper-tiny.en-fp16"
    model, data = read_ct2(model_bin)
    skipped = [v for v in model.variables if v.dtype != "float16"]
    notes = [
        f"CTranslate2 binary v{model.version}, {model.spec} revision {model.revision}: "
        f"{len(model.variables) - len(skipped)} float16 variables kept; {len(skipped)} "
        f"skipped ({', '.join(f'{v.name} {v.dtype}' for v in skipped)}); "
        f"{len(model.aliases)} alias(es) not written"
    ]
    if not _fresh(out, model_bin):
        _prepare(out)
        tensors: list[Tensor] = [
            (v.name, "F16", v.shape, data[v.offset : v.offset + v.nbytes])
            for v in model.variables
            if v.dtype == "float16"
        ]
        meta = {"format": "pt", "converted_from": f"CTranslate2 {model.spec} model.bin"}
        write_safetensors(out / "model.safetensors", tensors, meta)
        _stamp(out, model_bin)
    return [{"name": out.name, "path": str(out), "notes": notes}]


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("minilm", "whisper"):
        sys.stderr.write(__doc__ or "")
        return 2
    what, source, root = argv[0], Path(argv[1]), Path(argv[2])
    made = minilm(source, root) if what == "minilm" else whisper(source, root)
    sys.stdout.write(json.dumps({"datasets": made}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
