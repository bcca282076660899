"""Golden-vector generator: fixed model, fixed keys (keys-example/), fixed time,
fixed randomness. Run it to (re)build the vectors after a deliberate format
change, and say so in docs/FORMAT.md in the same commit:

    .venv/bin/python tests/vectors/generate.py

The sign-only vector is rebuilt bit for bit by the tests. The encrypted vector
cannot be: HPKE draws its ephemeral key inside cryptography, so the tests
check that it still opens (and that an independent reader following
docs/FORMAT.md decodes it) instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KEYS = ROOT / "keys-example"
# 2026-01-01T00:00:00Z: a fixed creation time for every vector.
EPOCH = 1767225600
PLAIN = "plain-signed.spk"
ENCRYPTED = "encrypted.spk"


def _f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _bf16_from_f32(data: bytes) -> bytes:
    # bf16 is the top half of an fp32: take bytes 2..3 of each little-endian element.
    return b"".join(data[i + 2 : i + 4] for i in range(0, len(data), 4))


def _safetensors(tensors: list[tuple[str, str, list[int], bytes]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(t[3] for t in tensors)


def _noise_bf16(count: int) -> bytes:
    """bf16 values whose sign and low mantissa bits come from SHA-256 (so the same
    on every platform), with exponents in a narrow band, like trained weights."""
    out = bytearray()
    for i in range(count):
        h = int.from_bytes(hashlib.sha256(b"noise" + i.to_bytes(4, "big")).digest()[:4], "big")
        value = ((h >> 31) << 15) | ((120 + h % 7) << 7) | ((h >> 3) & 0x7F)
        out += value.to_bytes(2, "little")
    return bytes(out)


def _skewed_f32(count: int) -> bytes:
    """``count`` fp32 values in two binades, 85 % in the upper one, with m3 = 0
    and random lower mantissa bits: an H plane of two symbols whose probabilities
    no whole-bit (Huffman) code fits, so the writer stores it "ans"."""
    out = bytearray()
    for i in range(count):
        h = hashlib.sha256(b"skew" + i.to_bytes(4, "big")).digest()
        k = 0 if h[0] < 218 else 1
        mantissa = int.from_bytes(h[1:4], "little") & 0xFFFFF  # bits 19..0
        out += struct.pack("<I", ((h[4] & 1) << 31) | ((126 - k) << 23) | mantissa)
    return bytes(out)


def _wide_f32(count: int) -> bytes:
    """``count`` fp32 values in two binades, 85 % in the upper one, with sign and
    mantissa zero: an H plane of two symbols (ans32 from 131,072 of them), and
    other planes of zeros that zstd makes almost nothing of, so that the vectors
    stay small."""
    out = bytearray()
    for i in range(count):
        k = 0 if hashlib.sha256(b"wide" + i.to_bytes(4, "big")).digest()[0] < 218 else 1
        out += struct.pack("<I", (126 - k) << 23)
    return bytes(out)


def _skewed_f8(count: int, tag: bytes = b"fp8") -> bytes:
    """``count`` e4m3 bytes, four values with probabilities 0.8, 0.1, 0.06 and 0.04
    in hash order: a one-byte tensor that the writer codes as one ans plane (ans32
    from 131,072 bytes)."""
    values = [(0x38, 205), (0xB8, 230), (0x30, 245), (0x40, 256)]  # (byte, cumulative /256)
    out = bytearray()
    for i in range(count):
        r = hashlib.sha256(tag + i.to_bytes(4, "big")).digest()[0]
        out.append(next(v for v, bound in values if r < bound))
    return bytes(out)


def _mix(i: int) -> int:
    """A well-spread integer of ``i`` (Knuth's multiplicative hash, top bits)."""
    return ((i * 2654435761) & 0xFFFFFFFF) >> 12


def build_model(target: Path) -> None:
    """A small model with every feature the format must round-trip. Values come
    from integer arithmetic only, so the bytes are the same on every platform."""
    target.mkdir(parents=True, exist_ok=False)
    # A multiplicative hash orders the values: a short period would repeat itself,
    # and the writer would then rightly code plain zstd instead of bgx.
    # 251 distinct values: with fewer, zstd level 3 finds the values' repeats and
    # codes the segment smaller than bgx does.
    weights = _f32([(_mix(i) % 251 - 125) / 16.0 for i in range(64 * 16)])
    # More distinct values for bf16, whose 7 mantissa bits would otherwise leave
    # too few symbols for bgx to beat plain zstd (zeros among them: escapes).
    spread = _f32([(_mix(i + 7) % 4001 - 2000) / 64.0 for i in range(64 * 16)])
    tensors = [
        ("embed.weight", "F32", [64, 16], weights),
        ("embed.bf16", "BF16", [64, 16], _bf16_from_f32(spread)),
        ("norm.f16", "F16", [8], struct.pack("<8e", *[i / 4 for i in range(8)])),
        ("pos.ids", "I64", [5], struct.pack("<5q", 0, 1, 2, -3, 2**40)),
        # Small neighbours of one dtype share a segment (a run): the writer's rule.
        # Those above are each of another dtype than the next, and "empty" ends
        # any run, so they keep a segment each; the run is at the end.
        ("scale", "F32", [], _f32([0.5])),
        ("mask", "BOOL", [6], bytes([1, 0, 1, 1, 0, 0])),
        ("pruned", "F32", [256], bytes(1024)),
        ("empty", "F32", [0, 4], b""),
        # Columns four binades apart: bgx per-column exponent offsets (period 8).
        (
            "cols.weight",
            "F32",
            [128, 8],
            _f32([((i * 13) % 29 - 14) * 2.0 ** (4 * (i % 8)) / 8 for i in range(128 * 8)]),
        ),
        (
            "half.weight",
            "F16",
            [64, 16],
            struct.pack("<1024e", *[(_mix(i) % 4001 - 2000) / 1024 for i in range(1024)]),
        ),
        # bf16 with near-random mantissas and signs: its L plane is stored "p5".
        # 4095 values: the p5 plane ends with 5 padding bits.
        ("noise.bf16", "BF16", [63, 65], _noise_bf16(4095)),
        # F64 has no bgx layout: byte grouping (bg).
        ("double", "F64", [64], struct.pack("<64d", *[(i * 7 % 23 - 11) / 8 for i in range(64)])),
        # 5121 fp32 values whose H plane is stored "ans" (at least 4096 symbols, and
        # 5121 is not a multiple of the 4 coder states).
        ("skew.weight", "F32", [5121], _skewed_f32(5121)),
        # 4099 fp8 values, coded as one ans plane (the "ans" codec).
        ("fp8.weight", "F8_E4M3", [4099], _skewed_f8(4099)),
        # 131,079 of each: an H plane stored "ans32", and the "ans32" codec. 131,079
        # is not a multiple of the 32 coder states.
        ("wide.weight", "F32", [131079], _wide_f32(131079)),
        ("fp8.wide", "F8_E4M3", [131079], _skewed_f8(131079, b"fp8 wide")),
        # A run of three small fp32 tensors in one segment, coded as one array.
        ("run.bias", "F32", [16], _f32([(_mix(i + 3) % 61 - 30) / 32.0 for i in range(16)])),
        ("run.norm", "F32", [2, 16], _f32([1.0 + (_mix(i + 5) % 9) / 64.0 for i in range(32)])),
        ("run.head", "F32", [4], _f32([0.25, -0.5, 1.5, -2.0])),
    ]
    (target / "model.safetensors").write_bytes(_safetensors(tensors))
    (target / "config.json").write_text('{"hidden_size": 16, "model_type": "golden"}\n')
    (target / "tokenizer.json").write_text('{"version": "1.0", "vocab": {"a": 0, "b": 1}}\n')
    (target / "vocab.txt").write_text("[PAD]\na\nb\n")
    (target / "empty.txt").write_bytes(b"")
    (target / "sub" / "deep").mkdir(parents=True)
    (target / "sub" / "deep" / "notes.md").write_text("# golden\n" * 50)


@contextmanager
def fixed_randomness(seed: bytes = b"secpack golden vectors") -> Iterator[None]:
    """Replace the CSPRNG behind DEKs and salts with a deterministic stream."""
    from secpack.recipes import aead

    counter = [0]

    def deterministic(n: int) -> bytes:
        counter[0] += 1
        return hashlib.sha256(seed + counter[0].to_bytes(8, "big")).digest()[:n]

    original = aead.random_bytes
    aead.random_bytes = deterministic
    try:
        yield
    finally:
        aead.random_bytes = original


def seal_plain(model: Path, out: Path) -> None:
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH)
    seal(
        str(model),
        str(out),
        name="golden",
        version=3,
        encrypt=False,
        sign_keys=[
            load_signing_key(str(KEYS / "signing-ed25519.key")),
            load_signing_key(str(KEYS / "signing-p256.key")),
        ],
    )


def seal_encrypted(model: Path, out: Path) -> None:
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal

    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH)
    with fixed_randomness():
        seal(
            str(model),
            str(out),
            name="golden",
            version=3,
            expires="2100-01-01T00:00:00Z",
            sign_keys=[load_signing_key(str(KEYS / "signing-p384.key"))],
            recipients=[
                (None, load_recipient(str(KEYS / "recipient-x25519.key.pub"))),
                ("config", load_recipient(str(KEYS / "other-recipient-x25519.key.pub"))),
            ],
        )


def zstd_version() -> str:
    import zstandard

    return ".".join(map(str, zstandard.ZSTD_VERSION))


def main() -> None:
    import tempfile

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "golden"
        build_model(model)
        for name, fn in ((PLAIN, seal_plain), (ENCRYPTED, seal_encrypted)):
            target = HERE / name
            if target.exists():
                target.unlink()
            fn(model, target)
            print(f"wrote {target} ({target.stat().st_size} bytes)")
    # Compressed bytes are only reproducible with the same libzstd (see the tests).
    (HERE / "ZSTD_VERSION").write_text(zstd_version() + "\n")


if __name__ == "__main__":
    import argparse

    # No options: the parse is there so that `--help` prints this and rebuilds
    # nothing (the encrypted vector cannot be rebuilt bit for bit).
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
