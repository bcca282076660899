"""The tools secpack is measured against (model_signing, tar, zstd, age), how to
find or install them, and the keys every run uses."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from paths import ANCHORS_VENV, OUT, rm, shown
from procs import ChildFailed, run_child

__all__ = ["Keys", "Tools", "find_tools", "install_anchors", "make_keys", "tool_versions"]


@dataclass(frozen=True)
class Tools:
    python: str
    secpack: str
    model_signing: str | None
    zstd: str | None
    tar: str | None
    age: str | None
    age_keygen: str | None
    zipnn: bool  # ZipNN importable by ``python`` (the peer comparison)
    skipped: tuple[str, ...]


def _find_model_signing() -> str | None:
    candidates = [
        os.environ.get("SECPACK_BENCH_MODEL_SIGNING", ""),
        str(Path(sys.executable).parent / "model_signing"),
        str(ANCHORS_VENV / "bin" / "model_signing"),
        shutil.which("model_signing") or "",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def find_tools() -> Tools:
    secpack = Path(sys.executable).parent / "secpack"
    if not secpack.exists():
        found = shutil.which("secpack")
        if found is None:
            sys.exit("bench: no `secpack` command next to this python or on PATH (run make setup)")
        secpack = Path(found)
    skipped: list[str] = []
    ms = _find_model_signing()
    if ms is None:
        skipped.append(
            "model_signing: not installed (run `python bench/run.py --install-anchors` to put "
            "model-signing + pyopenssl into bench/out/anchors-venv)"
        )
    zstd, tar = shutil.which("zstd"), shutil.which("tar")
    if zstd is None or tar is None:
        skipped.append("tar | zstd -3 -T2: `zstd` or `tar` binary not found")
    age, age_keygen = shutil.which("age"), shutil.which("age-keygen")
    if age is None or age_keygen is None:
        skipped.append(
            "age: binary not installed, so the composed baseline runs without its encryption "
            "stage (`tar | zstd -3 -T2` only) and its times are a lower bound"
        )
    zipnn = importlib.util.find_spec("zipnn") is not None
    if not zipnn:
        skipped.append("ZipNN: not installed (`.venv/bin/pip install zipnn`; it needs torch)")
    return Tools(
        sys.executable, str(secpack), ms, zstd, tar, age, age_keygen, zipnn, tuple(skipped)
    )


def install_anchors() -> int:
    """Create bench/out/anchors-venv with model-signing and pyopenssl (its undeclared
    dependency). A separate venv keeps the project's own environment unchanged."""
    OUT.mkdir(parents=True, exist_ok=True)
    if not (ANCHORS_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANCHORS_VENV)], check=True)
    pip = [str(ANCHORS_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    return subprocess.run([*pip, "model-signing", "pyopenssl"], check=False).returncode


@dataclass(frozen=True)
class Keys:
    sign: Path
    sign_pub: Path
    recipient: Path
    recipient_pub: Path
    ec: Path
    ec_pub: Path
    age: Path | None
    age_recipient: str | None


def make_keys(tools: Tools, work: Path) -> Keys:
    keys = work / "keys"
    rm(keys)
    keys.mkdir(parents=True)
    sp = tools.secpack
    run_child([sp, "keygen", "signing", "-o", str(keys / "release.key"), "-q"])
    run_child([sp, "keygen", "recipient", "-o", str(keys / "server.key"), "-q"])
    # model_signing wants an EC key in PEM; secpack writes PKCS#8 / SPKI.
    run_child([sp, "keygen", "signing", "--alg", "ecdsa-p256", "-o", str(keys / "ec.key"), "-q"])
    age_key: Path | None = None
    age_recipient: str | None = None
    if tools.age and tools.age_keygen:
        age_key = keys / "age.txt"
        run_child([tools.age_keygen, "-o", str(age_key)])
        for line in age_key.read_text().splitlines():
            if line.startswith("# public key: "):
                age_recipient = line.removeprefix("# public key: ").strip()
    return Keys(
        keys / "release.key",
        keys / "release.key.pub",
        keys / "server.key",
        keys / "server.key.pub",
        keys / "ec.key",
        keys / "ec.key.pub",
        age_key,
        age_recipient,
    )


def tool_versions(tools: Tools) -> list[str]:
    out = []
    for label, argv in (
        ("secpack", [tools.secpack, "--version"]),
        ("model_signing", [tools.model_signing, "--version"] if tools.model_signing else []),
        ("zstd", [tools.zstd, "--version"] if tools.zstd else []),
        ("tar", [tools.tar, "--version"] if tools.tar else []),
        ("age", [tools.age, "--version"] if tools.age else []),
    ):
        if not argv:
            continue
        try:
            text = run_child(argv).stdout.strip().splitlines()
            first = text[0].strip("* ") if text else "?"
            out.append(f"- {label}: {first} (`{shown(argv[0])}`)")
        except (ChildFailed, OSError):
            out.append(f"- {label}: `{shown(argv[0])}` (version unknown)")
    return out
