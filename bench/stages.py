"""Where seal's and load's CPU time goes, stage by stage, on one thread.

    .venv/bin/python bench/stages.py bench/out/data/minilm-fp32

Seals the model directory (default settings, keys made for the run) into a
temporary package, then decodes every segment of every tensor component on one
thread and encodes every tensor of its safetensors files on one thread, with a
timer around each stage: read, SHA-256, AES-GCM, each codec step. Stages nest
(``codec`` holds ``ans``, ``merge`` and the rest), so the rows do not add up to
the total; ``other`` is the total less the outermost stages. A profiler's view
of the same work (``py-spy record --native``) agrees, but cannot separate the
stages that release the GIL on a loaded thread pool; this can.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMES: collections.Counter[str] = collections.Counter()


@contextmanager
def timed(module: Any, name: str, label: str) -> Iterator[None]:
    """Add the time of every call of ``module.name`` to TIMES[label]."""
    original = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - started

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def timed_native(labels: dict[str, str]) -> Iterator[None]:
    """The C helper's functions named in ``labels``, each timed under its label."""
    from secpack.codec import planes

    native = planes.native_module()
    if native is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        for name, label in labels.items():
            stack.enter_context(timed(native, name, label))
        yield


def _report(title: str, total: float, nbytes: int, outer: list[str]) -> None:
    print(f"\n{title}: {total * 1e3:.0f} ms on one thread, {nbytes / total / 1e6:.0f} MB/s")
    for label, seconds in TIMES.most_common():
        print(f"  {label:28s} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f} %")
    other = total - sum(TIMES[k] for k in outer)
    print(f"  {'other (Python, buffers)':28s} {other * 1e3:8.1f} ms  {100 * other / total:5.1f} %")


def decode_stages(pkg: Path, identity: Any, trust: Path) -> None:
    import secpack
    from secpack.codec import ans, bgx, zstd
    from secpack.envelope import dek
    from secpack.package import decode, reader

    package = secpack.open_package(pkg, identity=identity, trust=[trust], threads=1)
    labels = {"bgx_merge": "  bgx merge (C)", "ans_decode": "  ans decode (C)"}
    labels |= {"ans32_decode": "  ans32 decode (C)"}
    labels |= {"unpack5": "  p5 unpack (C)", "merge": "  bg merge (C)"}
    TIMES.clear()
    total, nbytes = 0.0, 0
    with (
        timed(decode, "read_segment_into", "read + SHA-256"),
        timed(reader.hashlib, "sha256", "  SHA-256"),
        timed(dek, "segment_aad", "AAD"),
        timed(dek, "open_segment_into", "AES-GCM (key + decrypt)"),
        timed(zstd, "decompress", "  zstd"),
        timed(bgx, "decode", "codec (bgx)"),
        timed(ans, "parse_table", "  ans table"),
        timed_native(labels),
    ):
        for comp in package.components:
            if comp.kind not in ("weights", "adapter"):
                continue
            opened = package._component(comp.name)
            segments = opened.component.segments
            out = bytearray(max((s.plain for s in segments), default=0))
            started = time.perf_counter()
            for i, seg in enumerate(segments):
                opened.decode_into(i, memoryview(out)[: seg.plain])
                nbytes += seg.plain
            total += time.perf_counter() - started
    package.close()
    _report(
        "decode (read, check, decrypt, decode every segment)",
        total,
        nbytes,
        ["read + SHA-256", "AAD", "AES-GCM (key + decrypt)", "codec (bgx)"],
    )


def _tensors(path: Path) -> Iterator[tuple[str, list[int], memoryview]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            yield info["dtype"], info["shape"], memoryview(raw)[8 + n + start : 8 + n + end]


def encode_stages(model: Path) -> None:
    from secpack.codec import ans, bgx, segment, zstd

    labels = {"bgx_split": "  bgx split (C)", "ans_encode": "    ans encode (C)"}
    labels |= {"ans32_encode": "    ans32 encode (C)"}
    labels |= {
        "bgx_analyze": "  window + column offsets (C)",
        "ans_quantize": "    quantize (C)",
        "pack5": "  p5 pack (C)",
        "entropy": "  entropy (C)",
        "histogram": "    histogram (C)",
    }
    TIMES.clear()
    total, nbytes = 0.0, 0
    with (
        timed(bgx, "encode", "codec (bgx)"),
        timed(zstd, "compress_plane", "  zstd (planes)"),
        timed(ans, "encode", "  ans (all)"),
        timed_native(labels),
    ):
        for path in sorted(model.glob("*.safetensors")):
            for dtype, shape, data in _tensors(path):
                width = {"F32": 4, "BF16": 2, "F16": 2}.get(dtype)
                if width is None:
                    continue
                period = shape[-1] if len(shape) >= 2 else 0
                started = time.perf_counter()
                for at in range(0, len(data), 4 << 20):  # seal's 4 MiB segments
                    chunk = data[at : at + (4 << 20)]
                    segment.encode(chunk, width, True, 3, dtype, period)
                    nbytes += len(chunk)
                total += time.perf_counter() - started
    _report("encode (the float codec of every F32/BF16/F16 tensor)", total, nbytes, ["codec (bgx)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a model directory (safetensors weights)")
    args = parser.parse_args()
    from secpack.api.seal import seal
    from secpack.recipes import keys

    signer, identity = keys.generate_signing("ed25519"), keys.generate_recipient()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sign.pub").write_bytes(keys.public_pem(signer.public_key()))
        pkg = folder / "model.spk"
        seal(
            str(args.model),
            str(pkg),
            sign_keys=[signer],
            recipients=[(None, identity.public_key())],
        )
        decode_stages(pkg, identity, folder / "sign.pub")
    encode_stages(args.model)


if __name__ == "__main__":
    main()
