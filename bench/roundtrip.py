"""What the size benchmarks (bench/opaque.py, bench/small.py) share: the files of
a model directory, the check that a package opens to them byte for byte, and the
commit the figures were taken at."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = REPO / "keys-example"


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def check_opens_to(pkg: Path, source: Path, work: Path) -> None:
    """The package (sealed with keys-example/) opens to ``source``, byte for byte;
    it is opened under ``work``, and removed again."""
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.sign.policy import Policy, policy_from_keys

    keys = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())]).keys
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out = Path(tmp) / "opened"
        extract(
            str(pkg),
            str(out),
            identities=[load_identity(str(KEYS / "recipient-x25519.key"))],
            policy=Policy(keys=keys, rollback=False),
        )
        for p in files(source):
            got = (out / p.relative_to(source)).read_bytes()
            if hashlib.sha256(got).digest() != hashlib.sha256(p.read_bytes()).digest():
                raise SystemExit(f"{p}: opened bytes differ from the input")


def head_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
