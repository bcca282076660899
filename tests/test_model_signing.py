"""model_signing interop: `model_signing verify key` accepts what `open
--emit-model-signing` writes, and `seal --require-model-signing` refuses a source
whose model.sig does not verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fails, ok

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "keys-example"
SHARED = Path(os.environ.get("SECPACK_SHARED", ROOT.parent / "shared"))
SAMPLE = SHARED / "data" / "sigstore" / "model_signing"


def _model_signing() -> str:
    exe = Path(sys.executable).parent / "model_signing"
    found = str(exe) if exe.exists() else shutil.which("model_signing")
    if not found:
        pytest.skip("model_signing (PyPI model-signing) is not installed")
    return found


def _ms_verify(directory: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _model_signing(),
            "verify",
            "key",
            str(directory),
            "--signature",
            str(directory / "model.sig"),
            "--public_key",
            str(pub),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _model(root: Path) -> Path:
    model = root / "m"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden": 8}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (model / "sub" / "notes.txt").write_text("nested\n")
    (model / "empty").write_bytes(b"")
    (model / ".gitattributes").write_text("*.bin filter=lfs\n")
    return model


@pytest.mark.parametrize("alg", ["p256", "p384"])
def test_model_signing_accepts_the_opened_directory(tmp_path: Path, alg: str) -> None:
    key = KEYS / f"signing-{alg}.key"
    model = _model(tmp_path)
    pkg = tmp_path / "m.spk"
    ok(
        "seal",
        model,
        "-o",
        pkg,
        "--sign-key",
        key,
        "--recipient",
        KEYS / "recipient-x25519.key.pub",
        "--model-signing",
        "-q",
    )
    out = tmp_path / "out"
    ok(
        "open",
        pkg,
        "-o",
        out,
        "--identity",
        KEYS / "recipient-x25519.key",
        "--trust",
        f"{key}.pub",
        "--emit-model-signing",
        "-q",
    )
    assert (out / "model.sig").is_file()
    res = _ms_verify(out, Path(f"{key}.pub"))
    assert res.returncode == 0, res.stdout + res.stderr
    # A changed file is caught by model_signing too.
    (out / "sub" / "notes.txt").write_text("changed\n")
    assert _ms_verify(out, Path(f"{key}.pub")).returncode != 0


def test_open_leaves_model_sig_out_unless_asked(tmp_path: Path) -> None:
    model = _model(tmp_path)
    pkg = tmp_path / "m.spk"
    ok(
        "seal",
        model,
        "-o",
        pkg,
        "--sign-key",
        KEYS / "signing-p256.key",
        "--no-encrypt",
        "--model-signing",
        "-q",
    )
    out = tmp_path / "out"
    ok("open", pkg, "-o", out, "--trust", KEYS / "signing-p256.key.pub", "-q")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()
    )
    fails(
        "input.invalid",
        "open",
        pkg,
        "-o",
        tmp_path / "o2",
        "--trust",
        KEYS / "signing-p256.key.pub",
        "--component",
        "config",
        "--emit-model-signing",
    )


def test_model_signing_needs_an_ecdsa_key(tmp_path: Path) -> None:
    model = _model(tmp_path)
    fails(
        "input.invalid",
        "seal",
        model,
        "-o",
        tmp_path / "x.spk",
        "--sign-key",
        KEYS / "signing-ed25519.key",
        "--no-encrypt",
        "--model-signing",
    )
    assert not (tmp_path / "x.spk").exists()


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared model_signing samples are absent")
def test_require_model_signing_with_a_real_signature(tmp_path: Path) -> None:
    source = tmp_path / "v1.1.0-elliptic-key"
    shutil.copytree(SAMPLE / "v1.1.0-elliptic-key", source)
    for p in source.rglob("*"):
        p.chmod(0o644)
    pub = SAMPLE / "signing-key-pub.pem"
    ok(
        "seal",
        source,
        "-o",
        tmp_path / "ok.spk",
        "--no-encrypt",
        "--require-model-signing",
        pub,
        "-q",
    )
    (source / "signme-1").write_bytes(b"tampered")
    fails(
        "input.signature",
        "seal",
        source,
        "-o",
        tmp_path / "bad.spk",
        "--no-encrypt",
        "--require-model-signing",
        pub,
    )
    assert not (tmp_path / "bad.spk").exists()


def test_require_model_signing_with_model_signing_sign(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key = KEYS / "signing-p256.key"
    res = subprocess.run(
        [
            _model_signing(),
            "sign",
            "key",
            str(model),
            "--private_key",
            str(key),
            "--signature",
            str(model / "model.sig"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ok(
        "seal",
        model,
        "-o",
        tmp_path / "ok.spk",
        "--no-encrypt",
        "--require-model-signing",
        f"{key}.pub",
        "-q",
    )
    fails(
        "input.signature",
        "seal",
        model,
        "-o",
        tmp_path / "other-key.spk",
        "--no-encrypt",
        "--require-model-signing",
        KEYS / "signing-p384.key.pub",
    )
    (model / "extra.bin").write_bytes(b"unsigned file")
    fails(
        "input.signature",
        "seal",
        model,
        "-o",
        tmp_path / "extra.spk",
        "--no-encrypt",
        "--require-model-signing",
        f"{key}.pub",
    )
    (model / "extra.bin").unlink()
    os.remove(model / "model.sig")
    fails(
        "input.signature",
        "seal",
        model,
        "-o",
        tmp_path / "none.spk",
        "--no-encrypt",
        "--require-model-signing",
        f"{key}.pub",
    )
