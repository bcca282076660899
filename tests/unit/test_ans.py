"""The ans and ans32 plane coders (docs/FORMAT.md §6.1.1, §6.1.2): exact round
trips, the C helper (with and without AVX2, for ans32) and the plain-Python
decoder agreeing on every input, valid or not, and strict refusal (with zeroed
output) of every plane a writer cannot produce."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secpack.buffers import scratch
from secpack.codec import ans, planes, segment, zstd
from secpack.errors import CodecError, SchemaError
from secpack.format.limits import Limits
from secpack.format.manifest import Plane, _parse_codec

needs_native = pytest.mark.skipif(not planes.NATIVE, reason="ans encoding needs the C helper")
L = 1 << 23
L32 = 1 << 16
BOTH = pytest.mark.parametrize("wide", [False, True], ids=["ans", "ans32"])


def _freqs(q: np.ndarray) -> bytes:
    return q.astype("<u2").tobytes()


def _code(symbols: bytes, wide: bool = False) -> tuple[bytes, bytes, bytes]:
    """(plane, frequency table as uint16, states + stream) for ``symbols``, as
    the writer codes them (no minimum size, no size limit)."""
    plane = ans.code(symbols, wide)
    freqs, states = ans.parse_table(memoryview(plane), wide)
    return plane, freqs, plane[states:]


def _decode_both(
    freqs: bytes, body: bytes, n: int, wide: bool = False
) -> tuple[bytes | str, bytes | str]:
    """Decode with the C helper and with Python: the output, or the error text.
    A failed decode must leave its output zeroed. For ans32 the C helper runs
    with and without its AVX2 loop (where the CPU has AVX2), which must agree."""
    results: list[bytes | str] = []
    native = planes.native_module()
    assert native is not None
    simd = native.simd()

    def python(freqs: bytes, body: memoryview, out: memoryview) -> None:
        ans.decode_python(freqs, body, out, wide)

    try:
        for mode in [simd, False] if wide else [simd]:
            native.simd(mode)
            for fn in [native.ans32_decode if wide else native.ans_decode, python]:
                out = bytearray(b"\xaa" * n)
                try:
                    fn(freqs, memoryview(body), memoryview(out))
                    results.append(bytes(out))
                except ValueError as exc:
                    assert out == bytes(n)
                    results.append(str(exc))
    finally:
        native.simd(simd)
    assert all(r == results[0] for r in results[::2])  # every C run alike
    return results[0], results[1]


@needs_native
@BOTH
@pytest.mark.parametrize(
    "n", [1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 95, 4096, 4097, 4099, 4127, 100_003]
)
def test_round_trip_every_lane_count(n: int, wide: bool) -> None:
    rng = np.random.default_rng(n)
    symbols = np.clip(rng.normal(120, 7, n), 0, 255).astype(np.uint8).tobytes()
    plane, freqs, body = _code(symbols, wide)
    c_out, py_out = _decode_both(freqs, body, n, wide)
    assert c_out == py_out == symbols
    out = bytearray(n)
    ans.decode(memoryview(plane), memoryview(out), wide)
    assert bytes(out) == symbols


@needs_native
@pytest.mark.parametrize(
    "symbols",
    [
        bytes([7]) * 5000,  # one symbol: frequency 4096, no stream at all
        bytes(range(256)) * 40,  # every byte value
        bytes([0, 255]) * 3000,  # the extremes of the alphabet
        bytes([1] * 4095 + [2]),  # one very rare symbol: frequency 1
    ],
)
@BOTH
def test_round_trip_edge_distributions(symbols: bytes, wide: bool) -> None:
    plane, freqs, body = _code(symbols, wide)
    c_out, py_out = _decode_both(freqs, body, len(symbols), wide)
    assert c_out == py_out == symbols
    out = bytearray(len(symbols))
    ans.decode(memoryview(plane), memoryview(out), wide)  # the table as written, parsed back
    assert bytes(out) == symbols


@needs_native
@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.booleans())
def test_any_bytes_round_trip(symbols: bytes, wide: bool) -> None:
    _plane, freqs, body = _code(symbols, wide)
    assert _decode_both(freqs, body, len(symbols), wide) == (symbols, symbols)


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_planes_both_decoders_agree_and_valid_means_canonical(data: st.DataObject) -> None:
    """Any change to the states or stream: both decoders give the same answer, and
    whatever decodes re-encodes to exactly the same bytes (one encoding per
    table), so nothing but the writer's own output is ever accepted."""
    n = data.draw(st.integers(min_value=1, max_value=600))
    wide = data.draw(st.booleans())
    rng = np.random.default_rng(n)
    symbols = np.clip(rng.normal(60, 3, n), 0, 255).astype(np.uint8).tobytes()
    _plane, freqs, body = _code(symbols, wide)
    damaged = bytearray(body)
    action = data.draw(st.sampled_from(["flip", "drop", "add", "set"]))
    at = data.draw(st.integers(min_value=0, max_value=len(damaged)))
    if action == "flip" and at < len(damaged):
        damaged[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    elif action == "drop" and at < len(damaged):
        del damaged[at]
    elif action == "add":
        damaged.insert(at, data.draw(st.integers(min_value=0, max_value=255)))
    elif at < len(damaged):
        damaged[at] = data.draw(st.integers(min_value=0, max_value=255))
    c_out, py_out = _decode_both(freqs, bytes(damaged), n, wide)
    assert c_out == py_out
    if isinstance(c_out, bytes):
        native = planes.native_module()
        assert native is not None
        out = bytearray(4 * n + 256)
        start = (native.ans32_encode if wide else native.ans_encode)(freqs, c_out, out)
        assert bytes(out[start:]) == bytes(damaged)


@needs_native
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: (L - 1).to_bytes(4, "little") + b[4:], "state out of range"),
        (lambda b: (1 << 31).to_bytes(4, "little") + b[4:], "state out of range"),
        (lambda b: b[:-1], "ends early"),
        (lambda b: b + b"\x00", "left over"),
        (lambda b: b[:12], "shorter than its states"),
    ],
)
def test_malformed_streams_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    symbols = np.clip(rng.normal(100, 5, 9999), 0, 255).astype(np.uint8).tobytes()
    _plane, freqs, body = _code(symbols)
    c_out, py_out = _decode_both(freqs, change(body), len(symbols))
    assert isinstance(c_out, str) and message in c_out
    assert isinstance(py_out, str) and message in py_out


@needs_native
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: (L32 - 1).to_bytes(4, "little") + b[4:], "state out of range"),
        (lambda b: b[:124] + (L32 - 1).to_bytes(4, "little") + b[128:], "state out of range"),
        (lambda b: b[:-2], "ends early"),
        (lambda b: b + b"\x00\x00", "left over"),
        (lambda b: b[:-1], "whole 16-bit words"),
        (lambda b: b + b"\x00", "whole 16-bit words"),
        (lambda b: b[:127], "shorter than its states"),
    ],
)
@pytest.mark.parametrize("n", [9999, 100_000])  # the AVX2 loop runs on the larger
def test_malformed_ans32_streams_are_refused(change, message: str, n: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    symbols = np.clip(rng.normal(100, 5, n), 0, 255).astype(np.uint8).tobytes()
    _plane, freqs, body = _code(symbols, wide=True)
    c_out, py_out = _decode_both(freqs, change(body), len(symbols), wide=True)
    assert isinstance(c_out, str) and message in c_out
    assert isinstance(py_out, str) and message in py_out


@BOTH
def test_the_final_state_must_be_where_the_encoder_started(wide: bool) -> None:
    # One symbol of frequency 4096 never changes a state and reads nothing: a
    # state other than the first decodes "fine" and is refused only by the end check.
    freqs = _freqs(np.array([4096] + [0] * 255))
    low, lanes = (L32, 32) if wide else (L, 4)
    body = (low + 5).to_bytes(4, "little") + low.to_bytes(4, "little") * (lanes - 1)
    out = bytearray(b"\x01" * 100)
    with pytest.raises(ValueError, match="final state"):
        ans.decode_python(freqs, memoryview(body), memoryview(out), wide)
    assert out == bytes(100)
    if planes.NATIVE:
        native = planes.native_module()
        assert native is not None
        with pytest.raises(ValueError, match="final state"):
            (native.ans32_decode if wide else native.ans_decode)(freqs, body, out)
        assert out == bytes(100)


def _table(entries: dict[int, bytes]) -> bytes:
    bitmap = bytearray(32)
    for s in entries:
        bitmap[s // 8] |= 1 << (s % 8)
    return bytes(bitmap) + b"".join(entries[s] for s in sorted(entries))


STATES = (L.to_bytes(4, "little")) * 4
STATES32 = (L32.to_bytes(4, "little")) * 32


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (bytes(32) + b"\x00" + STATES, "no symbol"),
        (_table({3: b"\x00", 4: bytes([0x80, 0x20])}) + STATES, "out of range"),  # f = 0
        (_table({3: bytes([0x80, 0x00]), 4: bytes([0x80, 0x20])}) + STATES, "minimal"),
        (_table({3: bytes([0x81, 0x80, 0x01])}) + STATES, "minimal"),  # 3-byte LEB128
        (_table({3: bytes([0x80, 0x21])}) + STATES, "out of range"),  # 4224 > 4096
        (_table({3: bytes([0x80, 0x1F]), 9: b"\x7e"}) + STATES, "sum"),  # 4094
        (_table({3: bytes([0x80, 0x20])}) + STATES[:15], "shorter"),
        (_table({s: b"\x10" for s in range(200)})[:132], "ends early"),
    ],
)
def test_malformed_tables_are_refused_and_zero_the_output(table: bytes, message: str) -> None:
    out = bytearray(b"\x55" * 64)
    with pytest.raises(ValueError, match=message):
        ans.decode(memoryview(table), memoryview(out))
    assert out == bytes(64)


def test_malformed_ans32_tables_are_refused() -> None:
    out = bytearray(b"\x55" * 64)
    for table, message in (
        (_table({3: bytes([0x80, 0x20])}) + STATES32[:127], "shorter"),
        (_table({3: bytes([0x80, 0x1F]), 9: b"\x7e"}) + STATES32, "sum"),
    ):
        with pytest.raises(ValueError, match=message):
            ans.decode(memoryview(table), memoryview(out), wide=True)
        assert out == bytes(64)


@pytest.mark.parametrize(("wide", "states"), [(False, STATES), (True, STATES32)])
def test_a_hand_made_plane_decodes(wide: bool, states: bytes) -> None:
    # Symbol 3 alone, frequency 4096 as two-byte LEB128 (0x80 0x20), and the
    # states where the encoder starts, with no stream: any number of 3s.
    plane = _table({3: bytes([0x80, 0x20])}) + states
    out = bytearray(99)
    ans.decode(memoryview(plane), memoryview(out), wide)
    assert out == bytes([3]) * 99


def test_quantized_frequencies_sum_to_4096_and_keep_every_symbol() -> None:
    rng = np.random.default_rng(2)
    for counts in (
        np.bincount(rng.integers(0, 256, 10**5), minlength=256),
        np.array([10**9] + [1] * 255),  # 255 rare symbols beside one huge one
        np.array([0] * 100 + [5] + [0] * 155),
        np.array([1] * 256),
    ):
        for quantize in (ans.quantize, ans.quantize_python):
            q = quantize(counts)
            assert int(q.sum()) == 4096
            assert ((q > 0) == (counts > 0)).all()
            assert q.min() >= 0 and q.max() <= 4096


@needs_native
def test_native_quantize_gives_the_frequencies_of_the_numpy_twin() -> None:
    rng = np.random.default_rng(6)
    cases = [
        np.array([10**9] + [1] * 255),
        np.array([7] * 256),
        np.array([0] * 255 + [1]),
        np.array([3, 1] * 128),  # a rounding that must take away, with ties
    ]
    for _ in range(500):
        counts = np.zeros(256, dtype=np.int64)
        present = rng.choice(256, int(rng.integers(1, 257)), replace=False)
        counts[present] = (rng.pareto(1.0, len(present)) * rng.integers(1, 10**6)).astype(
            np.int64
        ) + 1
        cases.append(counts)
    for counts in cases:
        assert np.array_equal(ans.quantize(counts), ans.quantize_python(counts)), counts


@needs_native
def test_native_quantize_refuses_counts_it_cannot_take() -> None:
    native = planes.native_module()
    assert native is not None
    with pytest.raises(ValueError, match="no symbol"):
        native.ans_quantize(np.zeros(256, dtype=np.uint64))
    with pytest.raises(ValueError, match="256 uint64"):
        native.ans_quantize(np.ones(255, dtype=np.uint64))
    with pytest.raises(ValueError, match="out of range"):
        native.ans_quantize(np.full(256, 1 << 41, dtype=np.uint64))


@needs_native
def test_encode_keeps_to_its_limit_and_minimum() -> None:
    rng = np.random.default_rng(4)
    symbols = np.clip(rng.normal(100, 4, 140_000), 0, 255).astype(np.uint8).tobytes()
    for part, kind in ((symbols[: ans.WIDE_MIN_SYMBOLS - 1], "ans"), (symbols, "ans32")):
        found = ans.encode(part, len(part))
        assert found is not None and found[0] == kind
        coded = found[1]
        assert len(coded) < len(part)
        assert ans.encode(part, len(coded)) is None  # must be strictly shorter
        assert ans.encode(part, len(coded) + 1) == found
        out = bytearray(len(part))
        ans.decode(memoryview(coded), memoryview(out), kind == "ans32")
        assert out == part
    assert ans.encode(symbols[:4095], 10**6) is None  # below the minimum: zstd's


@needs_native
def test_skewed_exponents_take_ans_and_beat_zstd() -> None:
    """Weights-like data whose H plane a whole-bit code fits badly: bgx stores H
    as ans, smaller than zstd, and a damaged ans plane is codec.invalid."""
    rng = np.random.default_rng(9)
    for n, kind in ((20_000, "ans"), (200_000, "ans32")):
        _skewed_exponents(rng, n, kind)


def _skewed_exponents(rng: np.random.Generator, n: int, kind: str) -> None:
    x = (rng.standard_normal(n) * 0.03).astype(np.float32).tobytes()
    enc = segment.encode(x, 4, True, 3, "F32", 0)
    assert enc.codec.id == "bgx" and enc.codec.planes[0].id == kind
    h = scratch("bgx.H", n)  # the H plane the encoder just wrote
    zstd_size = len(zstd.compress_plane(h))
    assert enc.codec.planes[0].size < zstd_size
    out = bytearray(len(x))
    segment.decode(enc.codec, enc.payload, memoryview(out), 1 << 24)
    assert bytes(out) == x
    damaged = bytearray(enc.payload)
    damaged[enc.codec.planes[0].size - 1] ^= 0x40  # last byte of the ans stream
    with pytest.raises(CodecError) as err:
        segment.decode(enc.codec, bytes(damaged), memoryview(out), 1 << 24)
    assert err.value.code == "codec.invalid"


def _record(h: dict[str, object]) -> dict[str, object]:
    return {
        "id": "bgx",
        "float": "bf16",
        "lo": 100,
        "span": 20,
        "escapes": 0,
        "period": 0,
        "planes": [h, {"id": "raw", "size": 64}],
    }


@pytest.mark.parametrize(("kind", "least"), [("ans", 49), ("ans32", 161)])
def test_ans_parses_only_on_h_and_at_least_its_smallest_plane(kind: str, least: int) -> None:
    def record(h: dict[str, object], n: int) -> dict[str, object]:
        r = _record(h)
        r["planes"] = [h, {"id": "raw", "size": n}]
        return r

    codec = _parse_codec(record({"id": kind, "size": least}, 200), "c", 400, Limits())
    assert codec.planes[0] == Plane(kind, least)
    on_l = record({"id": "raw", "size": 200}, 200)
    on_l["planes"] = [{"id": "raw", "size": 200}, {"id": kind, "size": 190}]
    for bad in (record({"id": kind, "size": least - 1}, 200), on_l):
        with pytest.raises(SchemaError) as err:
            _parse_codec(bad, "c", 400, Limits())
        assert err.value.code == "schema.invalid"


# --- the "ans" codec: a whole segment of one-byte numbers as one plane ---------------


def _int8_weights(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.standard_normal(n) * 20), -127, 127).astype(np.int8).tobytes()


@needs_native
@pytest.mark.parametrize(
    "dtype", ["I8", "U8", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"]
)
def test_one_byte_numbers_take_the_ans_codec_when_it_beats_zstd(dtype: str) -> None:
    data = _int8_weights(140_003, 11)
    levels = segment.LEVELS
    enc = segment.encode(data, 1, dtype.startswith("F8"), levels["balanced"], dtype)
    assert enc.codec.id == "ans32" and enc.codec.size == len(enc.payload)
    assert len(enc.payload) < len(zstd.compress(memoryview(data), levels["balanced"]))
    out = bytearray(len(data))
    segment.decode(enc.codec, enc.payload, memoryview(out), 1 << 24)
    assert bytes(out) == data
    # The fast profile keeps to zstd; so do bytes that are not one-byte numbers.
    assert segment.encode(data, 1, False, levels["fast"], dtype).codec.id == "zstd"
    assert segment.encode(data, 1, False, levels["balanced"], "").codec.id == "zstd"


@needs_native
@pytest.mark.parametrize(("n", "kind"), [(50_001, "ans"), (140_001, "ans32")])
def test_a_build_without_the_c_helper_reads_the_ans_codecs(
    monkeypatch: pytest.MonkeyPatch, n: int, kind: str
) -> None:
    data = _int8_weights(n, 13)
    enc = segment.encode(data, 1, False, segment.LEVELS["balanced"], "I8")
    assert enc.codec.id == kind
    monkeypatch.setattr(planes, "_native", None)
    out = bytearray(len(data))
    segment.decode(enc.codec, enc.payload, memoryview(out), 1 << 24)
    assert bytes(out) == data
    # ... and such a build writes zstd, which every reader decodes.
    assert segment.encode(data, 1, False, segment.LEVELS["balanced"], "I8").codec.id == "zstd"


@needs_native
@pytest.mark.parametrize(("n", "kind"), [(20_000, "ans"), (140_000, "ans32")])
def test_a_damaged_ans_segment_is_refused_with_no_output(n: int, kind: str) -> None:
    data = _int8_weights(n, 12)
    enc = segment.encode(data, 1, False, segment.LEVELS["balanced"], "I8")
    assert enc.codec.id == kind
    for damaged in (
        enc.payload[:-1] + bytes([enc.payload[-1] ^ 0x01]),  # final states disagree
        bytes([enc.payload[0] ^ 0x01]) + enc.payload[1:],  # a symbol left out of the bitmap
    ):
        out = bytearray(b"\xaa" * len(data))
        with pytest.raises(CodecError) as err:
            segment.decode(enc.codec, damaged, memoryview(out), 1 << 24)
        assert err.value.code == "codec.invalid"
        assert out == bytes(len(out))


@pytest.mark.parametrize(("kind", "least"), [("ans", 49), ("ans32", 161)])
def test_the_ans_codec_record_is_bounded_by_its_plaintext(kind: str, least: int) -> None:
    codec = _parse_codec({"id": kind, "size": least}, "c", 4096, Limits())
    assert (codec.id, codec.size, codec.payload_len(4096)) == (kind, least, least)
    assert codec.to_cbor() == {"id": kind, "size": least}
    for record, plain in (
        ({"id": kind, "size": least - 1}, 4096),  # below the smallest plane
        ({"id": kind, "size": 4097}, 4096),  # larger than the plaintext
        ({"id": kind, "size": least}, least - 1),  # a segment too short for any plane
        ({"id": kind, "size": least, "width": 1}, 4096),  # a key the codec does not have
    ):
        with pytest.raises(SchemaError) as err:
            _parse_codec(record, "c", plain, Limits())
        assert err.value.code == "schema.invalid"


def test_max_skips_zstds_slowest_level_where_ans_beats_its_fastest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--level max on one-byte weights: zstd's slowest level runs only where zstd's
    fastest beats ans (the bytes repeat), and then wins; on int8 codes that do not
    repeat, ans is kept without it."""
    levels: list[int] = []
    real = zstd.compress

    def spy(data: bytes | memoryview, level: int) -> bytes:
        levels.append(level)
        return real(data, level)

    monkeypatch.setattr(zstd, "compress", spy)
    rng = np.random.default_rng(4)
    codes = np.clip(np.round(rng.standard_normal(1 << 18) * 30), -127, 127).astype(np.int8)
    top = segment.LEVELS["max"]
    enc = segment.encode(memoryview(codes.tobytes()), 1, False, top, "I8")
    assert enc.codec.id == "ans32" and top not in levels
    balanced = segment.encode(
        memoryview(codes.tobytes()), 1, False, segment.LEVELS["balanced"], "I8"
    )
    assert enc.payload == balanced.payload
    # Repeats near and far (a block that recurs a megabyte later, past the window
    # of zstd's fastest level): the slowest level runs, finds them and wins.
    block = np.clip(np.round(rng.standard_normal(1 << 20) * 12), -127, 127).astype(np.int8)
    for tiled in (np.tile(codes[:4096], 64), np.tile(block, 4)):
        levels.clear()
        enc = segment.encode(memoryview(tiled.tobytes()), 1, False, top, "I8")
        assert enc.codec.id == "zstd" and top in levels
        assert len(enc.payload) < len(tiled) // 3


@needs_native
@pytest.mark.parametrize(
    "symbols",
    [
        np.clip(np.random.default_rng(1).normal(120, 7, 100_003), 0, 255)
        .astype(np.uint8)
        .tobytes(),
        bytes([7]) * 70_000,  # frequency 4096: never a word
        bytes([1] * 69_999 + [2]),  # frequency 1 beside 4095
        bytes(range(256)) * 300,  # every symbol, every lane
        np.random.default_rng(2).integers(0, 256, 4096 + 31, dtype=np.uint8).tobytes(),
    ],
)
def test_the_ans32_encoder_writes_the_same_plane_with_and_without_avx2(symbols: bytes) -> None:
    """The encoder's AVX2 rounds and its plain loop write the same bytes, also
    where the room runs out (both then give -1, and write nothing below the
    buffer they were given: it is a slice of a larger one, checked around)."""
    native = planes.native_module()
    assert native is not None
    freqs = _freqs(ans.quantize(np.bincount(np.frombuffer(symbols, np.uint8), minlength=256)))
    saved = native.simd()
    try:
        planes_written = []
        for mode in _simd_modes():
            native.simd(mode)
            out = bytearray(4 * len(symbols) + 256)
            start = native.ans32_encode(freqs, symbols, out)
            planes_written.append(bytes(out[start:]))
            # Too little room by one byte: refused, and nothing outside the slice.
            room = len(planes_written[-1]) - 1
            big = bytearray(b"\x5a" * (room + 64))
            assert native.ans32_encode(freqs, symbols, memoryview(big)[32 : 32 + room]) == -1
            assert big[:32] == b"\x5a" * 32 and big[32 + room :] == b"\x5a" * 32
        assert all(p == planes_written[0] for p in planes_written)
        out = bytearray(len(symbols))
        native.ans32_decode(freqs, planes_written[0], out)
        assert out == symbols
    finally:
        native.simd(saved)


def _simd_modes() -> list[bool]:
    """The encoder and decoder loops this machine can run: plain, and AVX2 if any."""
    native = planes.native_module()
    assert native is not None
    saved = native.simd()
    modes = [False, True] if native.simd(1) else [False]
    native.simd(saved)
    return modes


@needs_native
@pytest.mark.parametrize("wide", [False, True], ids=["ans", "ans32"])
@pytest.mark.parametrize("at", [0, 5_000, 99_999])  # the first, a middle and the last symbol
def test_an_encoder_refuses_a_symbol_its_table_leaves_out(wide: bool, at: int) -> None:
    native = planes.native_module()
    assert native is not None
    symbols = bytearray(np.random.default_rng(3).integers(0, 4, 100_000, dtype=np.uint8))
    symbols[at] = 9  # not in the table below
    freqs = _freqs(np.array([1024] * 4 + [0] * 252))
    saved = native.simd()
    try:
        for mode in _simd_modes():
            native.simd(mode)
            with pytest.raises(ValueError, match="frequency 0"):
                (native.ans32_encode if wide else native.ans_encode)(
                    freqs, bytes(symbols), bytearray(4 * len(symbols) + 256)
                )
    finally:
        native.simd(saved)
