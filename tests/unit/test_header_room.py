"""seal reserves room for the manifest before the blobs are written: the reserve
must hold whatever codec records the writer picks (bg, bgx with escapes and
column offsets), or every seal would fall back to moving all its blobs."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from secpack.api.keyfiles import load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.transport import atomic

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _vectors() -> object:
    spec = importlib.util.spec_from_file_location(
        "vectors_generate", ROOT / "tests/vectors/generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _matrix_model(root: Path) -> None:
    rng = np.random.default_rng(2)
    cols = 300
    scale = 2.0 ** rng.integers(-8, 8, cols)
    f32 = (rng.standard_normal((2000, cols)) * scale * 0.01).astype(np.float32)
    f32[::97] = np.inf  # escapes
    tensors = {
        "w.f32": ("F32", f32),
        "w.f16": ("F16", f32.astype(np.float16)),
        "w.bf16": ("BF16", (f32.view(np.uint32) >> 16).astype(np.uint16)),
    }
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("level", ["balanced", "max"])
@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("model", ["golden", "matrices"])
def test_the_reserved_header_room_is_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str, encrypt: bool, model: str
) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the manifest outgrew the room reserved for it")

    monkeypatch.setattr(atomic.AtomicFile, "move_range", refuse)
    src = tmp_path / "m"
    if model == "golden":
        _vectors().build_model(src)  # type: ignore[attr-defined]
    else:
        src.mkdir()
        _matrix_model(src)
    seal(
        str(src),
        str(tmp_path / "m.spk"),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))]
        if encrypt
        else [],
        encrypt=encrypt,
        level=level,
        segment_size=1 << 20,
    )
    assert (tmp_path / "m.spk").stat().st_size > 0
