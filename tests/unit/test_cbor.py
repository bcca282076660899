"""Strict CBOR: every class of non-canonical or forbidden input has its own code."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secpack.errors import CborError
from secpack.format import cbor

LIMITS = {"max_bytes": 1 << 20, "max_depth": 8, "max_items": 10_000}

_NATIVE = cbor._native


@pytest.fixture(autouse=True, params=["c", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test here runs with the C scan and with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(cbor, "_native", None)
    elif _NATIVE is None:
        pytest.skip("the C scan was not built (test_the_c_scan_was_built requires it)")
    yield request.param


def _code(hexdata: str, **kw: object) -> str:
    with pytest.raises(CborError) as err:
        cbor.decode(bytes.fromhex(hexdata), **{**LIMITS, **kw})  # type: ignore[arg-type]
    return err.value.code


@pytest.mark.parametrize(
    ("hexdata", "code"),
    [
        ("a2616101616102", "cbor.noncanonical"),  # duplicate key "a"
        ("a2616201616101", "cbor.noncanonical"),  # keys out of order
        ("a2626262016161", "cbor.noncanonical"),  # longer key first
        ("a10101", "cbor.forbidden"),  # integer key where text keys are required
        ("a1f501", "cbor.forbidden"),  # key `true`
        ("a1f93c0001", "cbor.forbidden"),  # key 1.0
        ("c11a514b67b0", "cbor.forbidden"),  # tag 1 (epoch time)
        ("c249010000000000000000", "cbor.forbidden"),  # tag 2 (bignum)
        ("d8185f", "cbor.forbidden"),  # tag 24 (embedded CBOR)
        ("d9d9f700", "cbor.forbidden"),  # tag 55799 (self-describe)
        ("9fff", "cbor.forbidden"),  # indefinite array
        ("bfff", "cbor.forbidden"),  # indefinite map
        ("5f4101ff", "cbor.forbidden"),  # indefinite byte string
        ("7f6161ff", "cbor.forbidden"),  # indefinite text string
        ("f7", "cbor.forbidden"),  # undefined
        ("f0", "cbor.forbidden"),  # simple(16)
        ("f820", "cbor.forbidden"),  # simple(32), two-byte form
        ("0102", "cbor.malformed"),  # trailing bytes
        ("", "cbor.malformed"),  # empty
        ("62c328", "cbor.malformed"),  # invalid UTF-8
        ("63616263ff", "cbor.malformed"),  # trailing after text
        ("5a00010000ff", "cbor.malformed"),  # 65536-byte string declared, 1 present
        ("9a00010000", "cbor.malformed"),  # 65536 items declared, none present
        ("ba7fffffff", "cbor.malformed"),  # 2^31 map entries over no data
        ("ff", "cbor.malformed"),  # lone break
        ("1c", "cbor.malformed"),  # reserved additional information
        ("1817", "cbor.noncanonical"),  # 23 in a two-byte head
        ("190017", "cbor.noncanonical"),  # 23 in a three-byte head
        ("1b0000000000000001", "cbor.noncanonical"),  # 1 in a nine-byte head
        ("3817", "cbor.noncanonical"),  # -24 in a two-byte head
        ("5800", "cbor.noncanonical"),  # empty byte string, long head
        ("fb3ff0000000000000", "cbor.noncanonical"),  # 1.0 as float64
        ("fa3f800000", "cbor.noncanonical"),  # 1.0 as float32
        ("81818181818181818101", "cbor.limit"),  # depth 9 > 8
    ],
)
def test_refusals_have_stable_codes(hexdata: str, code: str) -> None:
    assert _code(hexdata) == code


def test_size_cap_is_checked_before_decoding() -> None:
    assert _code("4100", max_bytes=1) == "cbor.limit"


def test_item_bomb_is_capped() -> None:
    bomb = cbor2.dumps([[0] * 100] * 100)
    assert _code(bomb.hex(), max_items=5_000) == "cbor.limit"


def test_integer_keys_allowed_when_asked() -> None:
    assert cbor.decode(bytes.fromhex("a201010326"), **LIMITS, text_keys=False) == {1: 1, 3: -7}
    with pytest.raises(CborError) as err:
        cbor.decode(bytes.fromhex("a1810101"), **LIMITS, text_keys=False)
    assert err.value.code == "cbor.forbidden"


def test_caller_mistakes_are_type_errors() -> None:
    with pytest.raises(TypeError):
        cbor.decode("a0", **LIMITS)  # type: ignore[arg-type]


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_encode_then_decode_round_trips(value: object) -> None:
    data = cbor.encode(value)
    assert cbor.decode(data, max_bytes=1 << 20, max_depth=64, max_items=10_000) == value


@given(st.binary(max_size=64))
def test_whatever_parses_reencodes_identically(data: bytes) -> None:
    try:
        value = cbor.decode(data, **LIMITS)
    except CborError:
        return
    assert cbor.encode(value) == data


@pytest.mark.skipif(
    os.environ.get("SECPACK_REQUIRE_NATIVE") != "1",
    reason="set SECPACK_REQUIRE_NATIVE=1 where the C helpers must have been built",
)
@pytest.mark.parametrize("scanner", ["python"], indirect=True)
def test_the_c_scan_was_built() -> None:
    assert cbor.NATIVE


# Every type the C encoder takes, at the edges of each head size, with map keys of
# several types (cbor2 sorts those shorter encoding first: the encoder must too).
_EDGE_INTS = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
_ints = st.integers(min_value=-(2**64) - 1, max_value=2**64) | st.sampled_from(
    _EDGE_INTS + [-1 - v for v in _EDGE_INTS]
)
_scalars = st.none() | st.booleans() | _ints | st.text(max_size=30) | st.binary(max_size=30)
_encodable = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.lists(children, max_size=6).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=6)
        | st.dictionaries(_ints | st.text(max_size=3) | st.binary(max_size=3), children, max_size=6)
    ),
    max_leaves=40,
)


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
@given(_encodable)
def test_the_c_encoder_writes_cbor2s_canonical_bytes(value: object) -> None:
    assert _NATIVE is not None
    data = _NATIVE.encode(value)
    if data is None:  # past 64 bits (bignums): left to cbor2
        return
    assert data == cbor2.dumps(value, canonical=True)


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_encoder_leaves_what_it_does_not_model_to_cbor2() -> None:
    import enum

    assert _NATIVE is not None
    nested: list[object] = []
    deep = nested
    for _ in range(100):
        deep.append([])
        deep = deep[0]  # type: ignore[assignment]
    others: list[object] = [
        1.5,
        [0.1],
        {"a": float("inf")},
        {"a": {1, 2}},
        bytearray(b"x"),
        enum.IntEnum("E", "A").A,
        2**64,
        -(2**64) - 1,
        "\ud800",
        {"\ud800": 1},
        nested,
    ]
    for value in others:
        assert _NATIVE.encode(value) is None, value
    # ... and cbor.encode gives cbor2's bytes for them, or cbor2's error.
    assert cbor.encode([0.1]) == cbor2.dumps([0.1], canonical=True)
    assert cbor.encode(2**64) == cbor2.dumps(2**64, canonical=True)
    with pytest.raises(UnicodeEncodeError):
        cbor.encode({"\ud800": 1})


def _floats() -> Iterator[bytes]:
    """Every half, and singles and doubles around every boundary of the rule:
    values each narrower form holds or just misses, subnormals, NaN payloads,
    infinities, signed zeros, the largest finite values."""
    import struct

    for bits in range(1 << 16):
        yield b"\xf9" + bits.to_bytes(2, "big")
    rng = random.Random(5)
    edges = [0.0, -0.0, 1.0, 1.5, 0.1, 65504.0, 65505.0, 65519.0, 65520.0, 2.0**-24, 2.0**-25]
    edges += [3 * 2.0**-24, 2.0**-14, 2.0**-149, 2.0**-126, 3.4028234663852886e38, 1e39, 1e300]
    edges += [float("inf"), float("-inf"), float("nan"), 2049.0, 2048.0, 4097.0, 16777217.0]
    for _ in range(3000):
        edges.append(rng.uniform(-70000, 70000))
        edges.append(struct.unpack("<e", rng.randbytes(2))[0] * 2.0 ** rng.randrange(-20, 20))
        edges.append(struct.unpack("<f", rng.randbytes(4))[0])
    for value in edges:
        for fmt, head in ((">f", b"\xfa"), (">d", b"\xfb")):
            try:
                yield head + struct.pack(fmt, value)
                yield head + struct.pack(fmt, -value)
            except OverflowError:
                pass
    for _ in range(3000):
        yield b"\xfa" + rng.randbytes(4)
        yield b"\xfb" + rng.randbytes(8)
    # NaNs with payloads, and signalling ones, in every width
    for nan in ("7e01", "fe00", "7c01", "7fc00000", "7fc00001", "ff800001"):
        yield (b"\xf9" if len(nan) == 4 else b"\xfa") + bytes.fromhex(nan)
    yield b"\xfb" + bytes.fromhex("7ff8000000000000")


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_shortest_float_rule_is_cbor2s_on_every_width() -> None:
    """The scans accept a float exactly when cbor2's canonical mode writes those
    bytes for its value, in C and in Python alike."""
    kw = {"max_depth": 4, "max_items": 10, "text_keys": True, "max_map_entries": 10}
    checked = accepted = 0
    for data in _floats():
        value = cbor2.loads(data)
        expected = bytes(cbor2.dumps(value, canonical=True)) == data
        c_verdict = _verdict(cbor._scan, data, kw)
        py_verdict = _verdict(cbor._scan_py, data, kw)
        assert c_verdict == py_verdict, data.hex()
        assert (c_verdict[0] == "ok") == expected, (data.hex(), c_verdict)
        checked += 1
        accepted += expected
    assert checked > 80_000 and 30_000 < accepted < checked


def test_decoding_a_float_does_not_encode_the_item_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule is checked on the bytes: decoding used to re-encode the whole item
    when it held a float, a second copy of an unsigned manifest in memory."""

    def refuse(obj: object) -> bytes:
        raise AssertionError("decode encoded the item")

    data = cbor.encode({"x": [1.5, b"\0" * 1000, {"a": 0.1}]})
    monkeypatch.setattr(cbor, "encode", refuse)
    assert cbor.decode(data, **LIMITS) == {"x": [1.5, b"\0" * 1000, {"a": 0.1}]}
    with pytest.raises(CborError) as err:
        cbor.decode(bytes.fromhex("a16178fa3fc00000"), **LIMITS)  # 1.5 as a single
    assert err.value.code == "cbor.noncanonical"


def _verdict(scan: object, data: bytes, kw: dict[str, object]) -> tuple[str, str]:
    try:
        floats = scan(data, **kw)  # type: ignore[operator]
    except CborError as exc:
        return exc.code, exc.detail
    return "ok", str(floats)


def _mutants(rng: random.Random) -> Iterator[bytes]:
    """Canonical encodings of random values, then cut, extended, or with bytes
    flipped, inserted, or dropped: inputs near the accepted ones, where the two
    scans could most easily disagree."""
    alphabet = ["", "a", "b", "ab", "\u00e9", "\U0001f600", "zz"]

    def value(depth: int) -> object:
        pick = rng.randrange(9 if depth < 4 else 6)
        if pick == 0:
            return rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1])
        if pick == 1:
            return -rng.randrange(1, 2**40)
        if pick == 2:
            return rng.choice(alphabet)
        if pick == 3:
            return rng.randbytes(rng.randrange(0, 30))
        if pick == 4:
            return rng.choice([None, True, False, 1.5, 0.1, -2.0])
        if pick == 5:
            return rng.random() * 1e6
        if pick == 6:
            return [value(depth + 1) for _ in range(rng.randrange(0, 5))]
        return {rng.choice(alphabet) + str(k): value(depth + 1) for k in range(rng.randrange(0, 5))}

    for _ in range(3000):
        data = bytearray(cbor.encode(value(0)))
        for _ in range(rng.randrange(0, 4)):
            op = rng.randrange(5)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data.insert(at, rng.randrange(256))
            elif op == 2 and data:
                del data[min(at, len(data) - 1)]
            elif op == 3:
                data = data[:at]
            else:
                data += rng.randbytes(rng.randrange(1, 4))
        yield bytes(data)


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_and_python_scans_agree_on_every_input() -> None:
    rng = random.Random(8949)
    inputs = list(_mutants(rng)) + [rng.randbytes(rng.randrange(0, 40)) for _ in range(3000)]
    settings = [
        {"max_depth": 8, "max_items": 10_000, "text_keys": True, "max_map_entries": 4096},
        {"max_depth": 2, "max_items": 7, "text_keys": False, "max_map_entries": 2},
        {"max_depth": 0, "max_items": 1, "text_keys": True, "max_map_entries": 0},
    ]
    outcomes = set()
    for data in inputs:
        for kw in settings:
            native = _verdict(cbor._scan, data, kw)
            reference = _verdict(cbor._scan_py, data, kw)
            assert native == reference, (data.hex(), kw)
            outcomes.add(native[0])
    # The inputs reach every verdict, so the agreement is not a vacuous one.
    assert outcomes >= {
        "ok",
        "cbor.malformed",
        "cbor.noncanonical",
        "cbor.forbidden",
        "cbor.limit",
    }


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_c_and_python_scans_agree_on_utf8() -> None:
    # Every string of one or two bytes, and the three- and four-byte forms around
    # each boundary of RFC 3629 (overlong forms, surrogates, past U+10FFFF).
    edges = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    strings = [bytes([a]) for a in range(256)]
    strings += [bytes([a, b]) for a in range(256) for b in range(256)]
    strings += [bytes([a, b, c]) for a in range(0xE0, 0xF0) for b in range(256) for c in edges]
    strings += [
        bytes([a, b, 0x80, d]) for a in range(0xF0, 0xF8) for b in range(256) for d in edges
    ]
    kw = {"max_depth": 1, "max_items": 1, "text_keys": True, "max_map_entries": 0}
    valid = 0
    for s in strings:
        data = bytes([0x60 | len(s)]) + s
        native = _verdict(cbor._scan, data, kw)
        assert native == _verdict(cbor._scan_py, data, kw), s.hex()
        valid += native[0] == "ok"
    assert 0 < valid < len(strings)


@pytest.mark.parametrize("scanner", ["c"], indirect=True)
def test_the_scans_agree_on_a_manifest_sized_input() -> None:
    """Deep enough into the input that every frame of the C scan's stack and
    every sort check has run many times."""
    items = [{"blob": 0, "digest": bytes(32), "plain": 1, "stored": 1} for _ in range(20_000)]
    data = cbor.encode({"segments": items})
    kw = {"max_depth": 8, "max_items": 200_000, "text_keys": True, "max_map_entries": 4096}
    assert _verdict(cbor._scan, data, kw) == _verdict(cbor._scan_py, data, kw) == ("ok", "False")
