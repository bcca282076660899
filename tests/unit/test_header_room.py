"""seal reserves room for the manifest before the blobs are written: the reserve
must hold whatever codec records the writer picks (bg, bgx with escapes and
column offsets), or every seal would fall back to moving all its blobs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import Tensor, write_safetensors

from secpack.api.keyfiles import load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.format import cbor
from secpack.format.limits import DEFAULT_LIMITS
from secpack.package.reader import read_header
from secpack.transport import atomic
from secpack.transport.spkfile import FileSource

# The module, not the function that secpack.api also calls seal.
seal_module = importlib.import_module("secpack.api.seal")
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
    # (Compacting small packages moves their blobs too: off here, so that only a
    # room too small for the manifest could call move_range.)
    monkeypatch.setattr(seal_module, "_COMPACT_SHARE", 0)
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


def _slack(pkg: Path) -> int:
    """Zero bytes the package's index pads its header with."""
    with FileSource(str(pkg)) as src:
        layout = read_header(src, DEFAULT_LIMITS).layout
        index = src.read_at(layout.index_off, layout.index_len)
    pad = cbor.decode(index, max_bytes=len(index), max_depth=4, max_items=1 << 20)["pad"]
    assert isinstance(pad, bytes)
    return len(pad)


def _seal_small_tensors(src: Path, out: Path) -> int:
    seal(
        str(src),
        str(out),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))],
    )
    return out.stat().st_size


def test_a_small_package_of_small_tensors_is_not_padded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room reserved for every codec record at its largest was 1-5 % of such
    packages: the blobs move up instead, and the package is that much smaller."""
    import secpack

    src = tmp_path / "m"
    src.mkdir()
    rng = np.random.default_rng(4)
    # Every neighbour of another dtype, so that no two share a segment (a run):
    # 300 segments, each with room reserved for its codec record.
    norms = {
        f"layer.{i:03d}.norm": rng.standard_normal(384).astype(np.float32 if i % 2 else np.float16)
        for i in range(300)
    }
    # Written in this order (safetensors.save_file would sort them by dtype).
    write_safetensors(
        src / "model.safetensors",
        {
            k: Tensor("F32" if v.dtype == np.float32 else "F16", v.shape, v.tobytes())
            for k, v in norms.items()
        },
    )
    compact = _seal_small_tensors(src, tmp_path / "compact.spk")
    monkeypatch.setattr(seal_module, "_COMPACT_SHARE", 0)
    padded = _seal_small_tensors(src, tmp_path / "padded.spk")
    slack = _slack(tmp_path / "padded.spk")
    assert slack > 0.01 * padded  # what there was to save
    assert _slack(tmp_path / "compact.spk") == 0
    # (less the pad's CBOR head, which shrinks too)
    assert padded - slack - 8 <= compact <= padded - slack
    trust = [str(KEYS / "signing-ed25519.key.pub")]
    identity = [str(KEYS / "recipient-x25519.key")]
    with secpack.open_package(tmp_path / "compact.spk", identity=identity, trust=trust) as pkg:
        loaded = pkg.state_dict("weights")
    assert loaded.keys() == norms.keys()
    assert all(np.array_equal(loaded[k], v) for k, v in norms.items())


def test_a_large_package_keeps_its_small_slack_rather_than_copy_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the blobs were moved to save a negligible share")

    monkeypatch.setattr(atomic.AtomicFile, "move_range", refuse)
    src = tmp_path / "m"
    src.mkdir()
    _matrix_model(src)
    size = _seal_small_tensors(src, tmp_path / "m.spk")
    assert 0 < _slack(tmp_path / "m.spk") * seal_module._COMPACT_SHARE < size
