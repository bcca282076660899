"""The safetensors dtypes beyond the first fifteen: the FNUZ fp8 forms, the F8_E8M0
block scales of MX-format checkpoints (stored beside F8_E4M3 weights), and
complex64. Each is sealed with a tensor table and coded for its kind, opens byte
for byte, loads in its own dtype, and stays exact in a precision variant."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import Tensor, write_safetensors

import secpack
from secpack.api.keyfiles import load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.codec import zstd

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _fp8_codes(rng: np.random.Generator, shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """Normal weights cast to a one-byte float: skewed bytes, as real fp8 weights are."""
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A shard laid out as an MX checkpoint's: fp8 weights, one E8M0 scale per 128
    x 128 block, bf16 norms, a float32 matrix, and complex rotary frequencies."""
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {
        "q.weight": _fp8_codes(rng, (256, 512), ml_dtypes.float8_e4m3fn),
        "q.scale": (rng.integers(118, 126, (2, 4))).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu),
        "k.weight": _fp8_codes(rng, (256, 128), ml_dtypes.float8_e4m3fnuz),
        "v.weight": _fp8_codes(rng, (128, 128), ml_dtypes.float8_e5m2fnuz),
        "norm": rng.standard_normal(512).astype(np.float32).astype(ml_dtypes.bfloat16),
        "proj": rng.standard_normal((64, 96)).astype(np.float32),
        "freqs": np.exp(1j * np.outer(np.arange(256), 1.0 / 10000 ** (np.arange(64) / 64))).astype(
            np.complex64
        ),
    }
    dtypes = {
        "q.weight": "F8_E4M3",
        "q.scale": "F8_E8M0",
        "k.weight": "F8_E4M3FNUZ",
        "v.weight": "F8_E5M2FNUZ",
        "norm": "BF16",
        "proj": "F32",
        "freqs": "C64",
    }
    root = tmp_path_factory.mktemp("mx") / "m"
    root.mkdir()
    write_safetensors(
        root / "model.safetensors",
        {n: Tensor(dtypes[n], a.shape, a.tobytes()) for n, a in arrays.items()},
    )
    (root / "config.json").write_text('{"quantization_config": {"fmt": "e4m3"}}')
    return root, arrays


def _open(pkg: Path) -> secpack.Package:
    return secpack.open_package(
        pkg,
        identity=str(KEYS / "recipient-x25519.key"),
        trust=[str(KEYS / "signing-ed25519.key.pub")],
    )


def _seal(root: Path, pkg: Path, **kw: object) -> list[str]:
    report = seal(
        str(root),
        str(pkg),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))],
        **kw,  # type: ignore[arg-type]
    )
    return list(report.notes)


def test_every_tensor_is_tabled_coded_for_its_kind_and_loads_in_its_dtype(
    shard: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, arrays = shard
    pkg = tmp_path / "m.spk"
    notes = _seal(root, pkg)
    assert not any("opaque" in n for n in notes), notes
    with _open(pkg) as p:
        assert sorted(p.tensor_names("weights")) == sorted(arrays)
        comp = next(c for c in p.manifest.components if c.name == "weights")

        def codecs(name: str) -> set[str]:
            rec = p.tensor_info(name)
            return {s.codec.id for s in comp.segments[rec.first : rec.first + rec.count]}

        # One-byte numbers (the scales are too few bytes for ans; ans32 from
        # 131,072 bytes), and complex64 as the float32 pairs it is.
        for name, kind in (("q.weight", "ans32"), ("k.weight", "ans"), ("v.weight", "ans")):
            assert codecs(name) == {kind}, name
        assert codecs("freqs") == {"bgx"}
        freqs = p.tensor_info("freqs")
        (seg,) = comp.segments[freqs.first : freqs.first + freqs.count]
        assert seg.codec.float == "fp32"
        raw = arrays["freqs"].tobytes()
        assert seg.stored < len(zstd.compress(memoryview(raw), 3))

        sd = p.state_dict("weights")
        for name, want in arrays.items():
            assert sd[name].dtype == want.dtype, name
            assert sd[name].shape == want.shape and sd[name].tobytes() == want.tobytes()
        # The E8M0 scales are powers of two: 2 ** (byte - 127).
        scale = sd["q.scale"].astype(np.float32)
        assert np.array_equal(scale, 2.0 ** (arrays["q.scale"].view(np.uint8) - 127.0))
        assert np.array_equal(sd["freqs"], arrays["freqs"])
        assert p.read_file("weights", "model.safetensors") == (
            (root / "model.safetensors").read_bytes()
        )


def test_a_variant_changes_only_the_wide_floats(
    shard: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """int8 quantizes the float32 matrix; the fp8 codes, their scales and the
    complex frequencies are served exactly as they are."""
    root, arrays = shard
    pkg = tmp_path / "v.spk"
    _seal(root, pkg, variants=["int8"])
    with _open(pkg) as p:
        sd = p.state_dict("weights", prefer=["int8"])
        assert p.served() == "int8"
        for name in ("q.weight", "q.scale", "k.weight", "v.weight", "freqs"):
            assert sd[name].dtype == arrays[name].dtype, name
            assert sd[name].tobytes() == arrays[name].tobytes(), name
        proj = arrays["proj"]
        err = np.linalg.norm(sd["proj"] - proj) / np.linalg.norm(proj)
        assert sd["proj"].dtype == np.float32 and 0 < err < 0.01
