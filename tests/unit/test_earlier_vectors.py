"""Packages written by an earlier secpack still verify, open and load.

tests/vectors/earlier/ holds the golden vectors as the writer made them before
tensor runs and compressed tensor tables (FORMAT §4, §5): one segment per
tensor, every table stored as it is. model.json lists the files they hold
(size and SHA-256), taken from that version's golden model. A reader must keep
reading what writers of the same format version wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import secpack
from secpack.api.extract import extract
from secpack.api.keyfiles import load_identity
from secpack.api.verify import verify
from secpack.sign.policy import policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
EARLIER = ROOT / "tests" / "vectors" / "earlier"
KEYS = ROOT / "keys-example"
CASES = [
    ("plain-signed.spk", "signing-ed25519.key.pub", None),
    ("encrypted.spk", "signing-p384.key.pub", "recipient-x25519.key"),
]


def _tree(root: Path) -> dict[str, dict[str, object]]:
    return {
        p.relative_to(root).as_posix(): {
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size": p.stat().st_size,
        }
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("vector", "trust", "identity"), CASES)
def test_an_earlier_package_verifies_and_opens_to_its_model(
    tmp_path: Path, vector: str, trust: str, identity: str | None
) -> None:
    policy = policy_from_keys([(trust, (KEYS / trust).read_bytes())])
    report = verify(str(EARLIER / vector), policy)
    # Written before runs and compressed tables: the test keeps its point only
    # while the vectors are of that kind.
    for comp in report.manifest.components:
        assert comp.contents_size is None
    ids = [load_identity(str(KEYS / identity))] if identity else []
    extract(str(EARLIER / vector), str(tmp_path / "out"), identities=ids, policy=policy)
    assert _tree(tmp_path / "out") == json.loads((EARLIER / "model.json").read_text())


@pytest.mark.parametrize(("vector", "trust", "identity"), CASES)
def test_an_earlier_package_loads_tensor_by_tensor(
    vector: str, trust: str, identity: str | None
) -> None:
    with secpack.open_package(
        EARLIER / vector,
        identity=str(KEYS / identity) if identity else None,
        trust=[str(KEYS / trust)],
    ) as pkg:
        assert not any(pkg.tensor_info(n).run for n in pkg.tensor_names("weights"))
        # Compared with the file itself: each tensor's bytes at its data offsets.
        stored = pkg.read_file("weights", "model.safetensors")
        expected = json.loads((EARLIER / "model.json").read_text())["model.safetensors"]
        assert hashlib.sha256(stored).hexdigest() == expected["sha256"]
        header_len = int.from_bytes(stored[:8], "little")
        header = json.loads(stored[8 : 8 + header_len])
        data = stored[8 + header_len :]
        for name, array in pkg.iter_tensors("weights"):
            begin, end = header[name]["data_offsets"]
            assert array.tobytes() == data[begin:end], name
        sd = pkg.state_dict("weights")
        assert sorted(sd) == sorted(k for k in header if k != "__metadata__")
        for name, array in sd.items():
            begin, end = header[name]["data_offsets"]
            assert array.tobytes() == data[begin:end], name
            assert list(array.shape) == header[name]["shape"], name
