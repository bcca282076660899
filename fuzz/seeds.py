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


def main() -> None:
    packages = _packages()
    seeds = {
        "header": packages,
        "open": packages,
        "manifest": [m for m in map(_manifest, packages) if m],
    }
    for target, items in seeds.items():
        folder = OUT / target
        folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            (folder / hashlib.sha256(item).hexdigest()[:16]).write_bytes(item)
        print(f"{target}: {len(items)} seeds in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
