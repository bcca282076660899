"""A synthetic model directory for the benchmark: random-normal fp32 and bf16
weights in safetensors shards, a safetensors index, a config and a tokenizer.

The layout mimics a small decoder-only LLM: a few large tensors (embeddings,
LM head), many 1-16 MiB projection matrices and some tiny norm vectors. fp32
and bf16 tensors live in separate shards, so that a reader without bfloat16
support (numpy without ml_dtypes) can still load the fp32 shards.

Everything is derived from a fixed seed: the same ``total_mib`` always gives
the same bytes, so the directory is generated once and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GENERATOR_VERSION", "SEED", "TensorSpec", "ensure_synthetic", "plan_tensors"]

SEED = 20_240_611
# Bump when the layout or the values change, so cached directories are rebuilt.
GENERATOR_VERSION = 1
MiB = 1 << 20
_ITEMSIZE = {"F32": 4, "BF16": 2}
_COLS = (1024, 2048, 4096)
_STAMP = ".bench-complete.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "F32" or "BF16"
    shape: tuple[int, ...]
    std: float

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def _matrix(nbytes: int, dtype: str, rng: np.random.Generator) -> tuple[int, int]:
    """A 2-D shape of exactly ``nbytes`` (rounded down to whole rows)."""
    elems = nbytes // _ITEMSIZE[dtype]
    cols = int(rng.choice([c for c in _COLS if elems >= c * 8] or [256]))
    return max(1, elems // cols), cols


def plan_tensors(total_mib: int) -> list[TensorSpec]:
    """The tensor list for a model of about ``total_mib`` MiB (1024 gives ~1 GiB)."""
    rng = np.random.default_rng(SEED)
    scale = total_mib / 1024
    specs: list[TensorSpec] = []
    # A few large tensors: ~512 MiB at full size.
    for name, mib, dtype in (
        ("model.embed_tokens.weight", 256, "F32"),
        ("lm_head.weight", 128, "BF16"),
        ("model.vision_proj.weight", 64, "F32"),
        ("model.audio_proj.weight", 64, "BF16"),
    ):
        rows, cols = _matrix(int(mib * MiB * scale), dtype, rng)
        specs.append(TensorSpec(name, dtype, (rows, cols), 0.02))
    # Many medium projection matrices (1-16 MiB) until ~500 MiB more at full size.
    budget = int(500 * MiB * scale)
    layer = 0
    sizes_mib = (1, 2, 3, 4, 6, 8, 12, 16)
    while budget > 0:
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
            mib = int(rng.choice(sizes_mib))
            nbytes = min(mib * MiB, max(budget, MiB))
            dtype = "F32" if layer % 2 == 0 else "BF16"
            rows, cols = _matrix(nbytes, dtype, rng)
            block = "mlp" if proj in ("up_proj", "down_proj") else "self_attn"
            name = f"model.layers.{layer}.{block}.{proj}.weight"
            specs.append(TensorSpec(name, dtype, (rows, cols), 0.02))
            budget -= rows * cols * _ITEMSIZE[dtype]
            if budget <= 0:
                break
        # Norm vectors: small, centred on 1.0 like trained layer norms.
        hidden = 2048
        for norm in ("input_layernorm", "post_attention_layernorm"):
            dtype = "F32" if layer % 2 == 0 else "BF16"
            specs.append(TensorSpec(f"model.layers.{layer}.{norm}.weight", dtype, (hidden,), 1.0))
        layer += 1
    # Some small odd-shaped tensors: biases and a rotary table.
    for i in range(24):
        n = int(rng.integers(64, 16 * 1024))
        specs.append(TensorSpec(f"model.extra.{i}.bias", "F32", (n,), 0.01))
    specs.append(TensorSpec("model.rotary_emb.inv_freq", "F32", (64,), 1.0))
    return specs


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    u = x.astype(np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _values(spec: TensorSpec, index: int) -> np.ndarray:
    rng = np.random.default_rng([SEED, index])
    count = spec.nbytes // _ITEMSIZE[spec.dtype]
    data = rng.standard_normal(count, dtype=np.float32)
    data *= np.float32(spec.std)
    if spec.std == 1.0:  # norm weights: centred on 1, not 0
        data = np.float32(1.0) + np.float32(0.05) * data
    return _bf16_bits(data) if spec.dtype == "BF16" else data


def _write_shard(path: Path, tensors: list[tuple[int, TensorSpec]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, spec in tensors:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for index, spec in tensors:
            f.write(_values(spec, index).tobytes())


def _shards(specs: list[TensorSpec], shard_max: int) -> list[list[tuple[int, TensorSpec]]]:
    """Group tensors into shards of at most ``shard_max`` bytes, fp32 and bf16 apart."""
    out: list[list[tuple[int, TensorSpec]]] = []
    for dtype in ("F32", "BF16"):
        current: list[tuple[int, TensorSpec]] = []
        size = 0
        for i, spec in enumerate(specs):
            if spec.dtype != dtype:
                continue
            if current and size + spec.nbytes > shard_max:
                out.append(current)
                current, size = [], 0
            current.append((i, spec))
            size += spec.nbytes
        if current:
            out.append(current)
    return out


def _tokenizer(vocab_size: int) -> dict[str, object]:
    rng = np.random.default_rng([SEED, 999_999])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab: dict[str, int] = {}
    while len(vocab) < vocab_size:
        n = int(rng.integers(2, 10))
        token = ("Ġ" if rng.random() < 0.4 else "") + "".join(rng.choice(letters, n))
        vocab.setdefault(token, len(vocab))
    tokens = list(vocab)
    merges = [
        f"{tokens[int(a)]} {tokens[int(b)]}" for a, b in rng.integers(0, len(tokens), (20_000, 2))
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "special": True} for i, t in enumerate(["<s>", "</s>", "<unk>"])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
    }


def _config(specs: list[TensorSpec]) -> dict[str, object]:
    layers = 1 + max(
        (int(s.name.split(".")[2]) for s in specs if s.name.startswith("model.layers.")),
        default=0,
    )
    return {
        "architectures": ["BenchForCausalLM"],
        "model_type": "bench",
        "hidden_size": 2048,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "vocab_size": 32_000,
        "torch_dtype": "float32",
        "note": "synthetic random-normal weights generated by secpack bench/synth.py",
    }


def ensure_synthetic(root: Path, total_mib: int, log: bool = True) -> Path:
    """Return the synthetic model directory for ``total_mib``, generating it once."""
    target = root / f"synthetic-{total_mib}MiB-v{GENERATOR_VERSION}"
    # The stamp lives next to the directory, never inside it: it is not part of the model.
    stamp = target.with_name(target.name + _STAMP)
    if target.is_dir() and stamp.is_file():
        return target
    if log:
        print(f"generating {target} (~{total_mib} MiB, seed {SEED}) ...", flush=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.mkdir(parents=True)
    specs = plan_tensors(total_mib)
    shards = _shards(specs, max(int(400 * MiB * total_mib / 1024), 16 * MiB))
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(tmp / name, shard)
        weight_map.update({spec.name: name for _, spec in shard})
    total = sum(s.nbytes for s in specs)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (tmp / "config.json").write_text(json.dumps(_config(specs), indent=2))
    (tmp / "tokenizer.json").write_text(json.dumps(_tokenizer(32_000), ensure_ascii=False))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 4096, "bos_token": "<s>", "eos_token": "</s>"}, indent=2)
    )
    os.rename(tmp, target)
    stamp.write_text(
        json.dumps(
            {
                "seed": SEED,
                "version": GENERATOR_VERSION,
                "total_mib": total_mib,
                "tensors": len(specs),
            }
        )
    )
    return target


def main(argv: list[str]) -> int:
    """Generate (or find) the directory; print {"path", "seed", "total_mib"} as JSON."""
    p = argparse.ArgumentParser(description="Generate the benchmark's synthetic model.")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "out" / "data")
    args = p.parse_args(argv)
    path = ensure_synthetic(args.root, args.size_mib, log=False)
    print(json.dumps({"path": str(path), "seed": SEED, "total_mib": args.size_mib}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
