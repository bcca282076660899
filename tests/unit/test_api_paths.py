"""The Python API takes ``pathlib.Path`` (any ``os.PathLike``) wherever it takes a
path, as the loader does. ``seal`` once wrote its package and then failed on a
Path, while writing the audit record, with a TypeError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import secpack
from secpack.api.keyfiles import load_identity, load_recipient, load_signing_key, resolve_policy

KEYS = Path(__file__).resolve().parents[2] / "keys-example"


def test_every_verb_takes_path_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SECPACK_AUDIT_LOG", str(audit))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"layers": 2}')
    (model / "notes.txt").write_text("hello\n")
    package = tmp_path / "m.spk"
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None, None)

    sealed = secpack.seal(
        model,
        package,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))],
    )
    assert sealed.path == str(package) and package.is_file()
    assert secpack.verify(package, policy).path == str(package)
    assert secpack.inspect(package).manifest.name == "m"
    out = tmp_path / "out"
    identity = load_identity(str(KEYS / "recipient-x25519.key"))
    secpack.extract(package, out, identities=[identity], policy=policy)
    assert (out / "notes.txt").read_text() == "hello\n"
    signed = tmp_path / "signed.spk"
    secpack.add_signature(package, load_signing_key(str(KEYS / "signing-p256.key")), signed)
    assert signed.is_file()
    # The audit log took every verb that records itself, each path as text.
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["package"]["path"] for r in records] == [str(package)] * len(records)
    assert len(records) >= 4
