"""Package size of models made of many small tensors, side by side with zstd and
ZipNN: where a package's own structure (a digest, salt, GCM tag and codec record
per segment, and the tensor table) weighs most.

    .venv/bin/python bench/small.py          # fetches fracast, writes docs/BENCHMARKS-small.md

The models:

- fracast 0.1.0 from PyPI (fetched with ``pip download`` into bench/out/small/,
  not copied into the repository): a forecaster shipped as safetensors, 114
  tensors of 4 bytes to 48 KiB in fp32 and int8 (and their config files);
- ``tiny-transformer``, made here from a fixed seed: four layers of a 128-wide
  encoder in Hugging Face's name order, so that 512-byte biases and norms sit
  between 64-256 KiB matrices (66 fp32 tensors, 4.7 MiB);
- ``lora``, made here from a fixed seed: a rank-16 adapter for 224 projections,
  448 fp16 matrices of 128 KiB (56 MiB).

For each: zstd -3 and -19 (one frame per file), ZipNN as ``bench/peer_codecs.py``
runs it for the main benchmark (header and dtype runs of each safetensors file,
the rest zstd -3), and ``secpack seal`` (balanced, signed) encrypted to one
recipient and with ``--no-encrypt``. *secpack, one segment per tensor* is the
encrypted seal with tensor runs and compressed tables turned off (FORMAT §4,
§5): what every version before them wrote. Each package is opened again and
compared with the input byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import roundtrip  # noqa: E402  (beside this file)

OUT = REPO / "bench" / "out" / "small"
DOCS = REPO / "docs" / "BENCHMARKS-small.md"
KEYS = REPO / "keys-example"
FRACAST = "fracast==0.1.0"


def _fracast() -> Path:
    """fracast's weights directory, fetched and unpacked once."""
    target = OUT / "fracast"
    if target.is_dir() and any(target.iterdir()):
        return target
    dl = OUT / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dl), FRACAST],
        check=True,
    )
    (wheel,) = dl.glob("fracast-0.1.0-*.whl")
    target.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("fracast/weights/") and name.endswith((".safetensors", ".json")):
                (target / Path(name).name).write_bytes(z.read(name))
    return target


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """The tensors in the order given (safetensors.save_file would sort them)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, array) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _, array in tensors.values():
            f.write(array.tobytes())


def _made(
    name: str, build: Callable[[np.random.Generator], dict[str, tuple[str, np.ndarray]]]
) -> Path:
    target = OUT / name
    if not (target / "model.safetensors").is_file():
        target.mkdir(parents=True, exist_ok=True)
        _write_safetensors(target / "model.safetensors", build(np.random.default_rng(7)))
        (target / "config.json").write_text(json.dumps({"model_type": name}) + "\n")
    return target


def _tiny_transformer(rng: np.random.Generator) -> dict[str, tuple[str, np.ndarray]]:
    def w(*shape: int) -> tuple[str, np.ndarray]:
        return "F32", (rng.standard_normal(shape) * 0.02).astype(np.float32)

    out = {"emb.pos": w(512, 128), "emb.word": w(3000, 128)}
    for i in range(4):
        for part, rows, cols in (("ff1", 512, 128), ("ff2", 128, 512)):
            out[f"l{i}.{part}.bias"] = w(rows)
            out[f"l{i}.{part}.weight"] = w(rows, cols)
        for part in ("k", "ln1", "ln2", "o", "q", "v"):
            out[f"l{i}.{part}.bias"] = w(128)
            if part.startswith("ln"):
                out[f"l{i}.{part}.weight"] = (
                    "F32",
                    (1 + rng.standard_normal(128) * 0.05).astype(np.float32),
                )
            else:
                out[f"l{i}.{part}.weight"] = w(128, 128)
    return dict(sorted(out.items()))


def _lora(rng: np.random.Generator) -> dict[str, tuple[str, np.ndarray]]:
    out = {}
    for i in range(224):
        base = f"base_model.model.layers.{i // 7}.proj{i % 7}"
        out[f"{base}.lora_A.weight"] = (
            "F16",
            (rng.standard_normal((16, 4096)) * 0.01).astype(np.float16),
        )
        out[f"{base}.lora_B.weight"] = (
            "F16",
            (rng.standard_normal((4096, 16)) * 0.001).astype(np.float16),
        )
    return out


def _zstd(root: Path, level: int) -> int:
    import zstandard

    cz = zstandard.ZstdCompressor(level=level)
    return sum(len(cz.compress(p.read_bytes())) for p in roundtrip.files(root))


def _zipnn(root: Path, work: Path) -> int | None:
    """ZipNN's size as the main benchmark measures it (bench/peer_codecs.py)."""
    out = work / "zipnn.out"
    args = [str(root), str(out), "2"]  # two threads, as the main benchmark
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "peer_codecs.py"), "compress", "zipnn", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:  # ZipNN (and torch) not installed
        return None
    return int(json.loads(run.stdout.strip().splitlines()[-1])["bytes_out"])


@contextmanager
def _one_segment_per_tensor() -> Iterator[None]:
    """The writer before tensor runs and compressed tables: no runs, and every
    table stored as it is."""
    from secpack.format import cbor
    from secpack.package import plan, writer

    saved = plan.RUN_TENSOR, writer.packed_contents
    plan.RUN_TENSOR = 0
    writer.packed_contents = lambda comp: (cbor.encode(comp.contents.to_cbor()), None)  # type: ignore[assignment]
    try:
        yield
    finally:
        plan.RUN_TENSOR, writer.packed_contents = saved  # type: ignore[assignment]


def _seal(source: Path, pkg: Path, encrypt: bool) -> int:
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal

    pkg.unlink(missing_ok=True)
    seal(
        str(source),
        str(pkg),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))]
        if encrypt
        else [],
        encrypt=encrypt,
    )
    roundtrip.check_opens_to(pkg, source, OUT)
    return pkg.stat().st_size


def _tensor_count(root: Path) -> int:
    count = 0
    for p in root.glob("*.safetensors"):
        with p.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            count += sum(1 for k in json.loads(f.read(n)) if k != "__metadata__")
    return count


def main() -> int:
    began = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    models = [
        ("fracast", "PyPI fracast 0.1.0: fp32 and int8 safetensors", _fracast()),
        (
            "tiny-transformer",
            "made here: fp32, biases between matrices",
            _made("tiny-transformer", _tiny_transformer),
        ),
        ("lora", "made here: fp16 rank-16 adapter", _made("lora", _lora)),
    ]
    rows = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        work = Path(tmp)
        for name, what, root in models:
            print(f"{name} ...", flush=True)
            original = sum(p.stat().st_size for p in roundtrip.files(root))
            with _one_segment_per_tensor():
                before = _seal(root, work / "before.spk", True)
            rows.append(
                (
                    name,
                    what,
                    _tensor_count(root),
                    original,
                    _zstd(root, 3),
                    _zstd(root, 19),
                    _zipnn(root, work),
                    before,
                    _seal(root, work / "enc.spk", True),
                    _seal(root, work / "plain.spk", False),
                )
            )
    _write(rows, time.perf_counter() - began)
    return 0


def _write(
    rows: list[tuple[str, str, int, int, int, int, int | None, int, int, int]], seconds: float
) -> None:
    head = roundtrip.head_commit()
    lines = [
        "# Models of many small tensors",
        "",
        "<!-- Generated by bench/small.py. Edit the script, not this file. -->",
        "",
        "```sh",
        ".venv/bin/python bench/small.py",
        "```",
        "",
        f"Commit {head}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{seconds / 60:.1f} min. Sizes in bytes, and over the original bytes "
        "(smaller is better). ZipNN is `bench/peer_codecs.py`, as in BENCHMARKS.md. "
        "*one segment per tensor* is the encrypted seal with tensor runs and "
        "compressed tables turned off, as every version before them wrote it.",
        "",
        "| model | what | tensors | original | zstd -3 | zstd -19 | ZipNN "
        "| secpack, one segment per tensor | secpack | secpack `--no-encrypt` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(n: int | None, orig: int, bold: bool = False) -> str:
        if n is None:
            return "n/a"
        text = f"{n:,} ({n / orig:.4f})"
        return f"**{text}**" if bold else text

    for name, what, tensors, orig, z3, z19, znn, before, enc, plain in rows:
        lines.append(
            f"| {name} | {what} | {tensors} | {orig:,} | {cell(z3, orig)} | {cell(z19, orig)} "
            f"| {cell(znn, orig)} | {cell(before, orig)} | {cell(enc, orig, True)} "
            f"| {cell(plain, orig)} |"
        )
    DOCS.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    sys.exit(main())
