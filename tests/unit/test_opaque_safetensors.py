"""A safetensors file with a dtype secpack does not model is sealed as an opaque file,
with a note, and still comes back byte for byte."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import secpack
from secpack.api.keyfiles import load_signing_key
from secpack.api.seal import seal
from secpack.errors import SecpackError

KEYS = Path(__file__).resolve().parents[2] / "keys-example"


def _file(entries: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(entries).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_unknown_dtype_is_sealed_opaque(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    mx = _file(
        {
            "scales": {"dtype": "F4", "shape": [8], "data_offsets": [0, 4]},
            "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        bytes(range(12)),
    )
    (model / "mx.safetensors").write_bytes(mx)
    (model / "config.json").write_text("{}")
    pkg = tmp_path / "m.spk"
    report = seal(
        str(model),
        str(pkg),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    assert len(report.notes) == 1 and "F4" in report.notes[0]
    with secpack.open_package(pkg, trust=[str(KEYS / "signing-ed25519.key.pub")]) as p:
        assert p.read_file("weights", "mx.safetensors") == mx
        assert p.tensor_names("weights") == []
        with pytest.raises(SecpackError) as missing:
            p.tensor("w")
        assert missing.value.code == "tensor.unknown"
    out = tmp_path / "out"
    secpack.extract(str(pkg), str(out), identities=[], policy=_policy())
    assert (out / "mx.safetensors").read_bytes() == mx


def test_a_malformed_file_is_still_refused(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    bad = _file(
        {
            "a": {"dtype": "F4", "shape": [8], "data_offsets": [0, 4]},
            "a2": {"dtype": "F32", "shape": [3], "data_offsets": [4, 12]},
        },
        bytes(12),
    )
    # Overlap is found before the unknown dtype would be: no opaque fallback for it.
    bad_overlap = _file(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        bytes(12),
    )
    (model / "ok.safetensors").write_bytes(bad)
    (model / "x.safetensors").write_bytes(bad_overlap)
    with pytest.raises(SecpackError) as err:
        seal(str(model), str(tmp_path / "m.spk"), encrypt=False)
    assert err.value.code == "input.safetensors"


def _policy() -> object:
    from secpack.sign.policy import Policy, policy_from_keys

    keys = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())]).keys
    return Policy(keys=keys, rollback=False)
