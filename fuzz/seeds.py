"""Write fuzz seeds: the golden vectors, their manifests, and (when present) the
hostile-input corpus, into fuzz/seeds/<target>/."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "seeds"


def _packages() -> list[bytes]:
    found = sorted((ROOT / "tests" / "vectors").glob("*.spk"))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "hostile"
        # The hostile corpus (tests/hostile/generate.py): every case is one defect away
        # from a valid package, which makes it good fuzzing seed material.
        subprocess.run(
            [sys.executable, str(ROOT / "tests" / "hostile" / "generate.py"), "--out", str(corpus)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found += sorted(corpus.glob("**/*.spk"))
        return [p.read_bytes() for p in found if p.stat().st_size < (4 << 20)]


def _manifest(data: bytes) -> bytes | None:
    if len(data) < 32:
        return None
    (m_len,) = struct.unpack(">I", data[12:16])
    return data[32 : 32 + m_len] if 32 + m_len <= len(data) else None


def _bgx_seeds() -> list[bytes]:
    """Valid cases for the ``bgx`` target: the planes the C helper writes for a few
    small float arrays (with escapes), behind the 6-byte header that target reads."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from secpack.codec import bgx, planes

    native = planes.native_module()
    if native is None:
        return []
    out = []
    rng = np.random.default_rng(1)
    for code, (kind, dtype) in enumerate([("fp32", "<f4"), ("bf16", "<f4"), ("fp16", "<f2")]):
        k = bgx._KINDS[kind]
        for n in (7, 33, 64):
            values = rng.standard_normal(n) * 0.1
            values[:4] = [np.inf, 0.0, 1e-30, -3e4]  # escapes of every kind
            raw = values.astype(dtype).tobytes()
            if kind == "bf16":
                raw = (np.frombuffer(raw, "<u4") >> 16).astype("<u2").tobytes()
            # Period 0: no column offsets, as the target's header has none.
            lo, span, _ = native.bgx_analyze(raw, k.code, 0)
            h, low, side = bytearray(n), bytearray(n), bytearray(2 * n)
            b1, b0 = (bytearray(n), bytearray(n)) if k.width == 4 else (bytearray(), bytearray())
            escapes = native.bgx_split(raw, k.code, lo, span, b"", h, low, b1, b0, side)
            body = bytes(h + low + b1 + b0 + side[: 2 * escapes])
            out.append(bytes([code, lo, span - 1, 0, 0, n - 1]) + body)
    return out


def _ans_seeds(wide: bool = False) -> list[bytes]:
    """Valid cases for the ``ans`` (``wide``: ``ans32``) target: a symbol count, then a plane the writer
    codes (no minimum size), for a few distributions."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from secpack.codec import ans, planes

    native = planes.native_module()
    if native is None:
        return []
    out = []
    rng = np.random.default_rng(2)
    for n, spread in ((1, 3.0), (5, 3.0), (64, 0.5), (700, 6.0), (2048, 30.0)):
        symbols = np.clip(rng.normal(128, spread, n), 0, 255).astype(np.uint8).tobytes()
        out.append((n - 1).to_bytes(2, "little") + ans.code(symbols, wide))
    return out


def main() -> None:
    packages = _packages()
    seeds = {
        "header": packages,
        "open": packages,
        "manifest": [m for m in map(_manifest, packages) if m],
        # The cbor target's first byte picks its limits: 0, the reader's own.
        "cbor": [b"\x00" + m for m in map(_manifest, packages) if m],
        "bgx": _bgx_seeds(),
        "ans": _ans_seeds(),
        "ans32": _ans_seeds(wide=True),
    }
    for target, items in seeds.items():
        folder = OUT / target
        folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            (folder / hashlib.sha256(item).hexdigest()[:16]).write_bytes(item)
        print(f"{target}: {len(items)} seeds in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
