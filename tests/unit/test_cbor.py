"""Strict CBOR: every class of non-canonical or forbidden input has its own code."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secpack.errors import CborError
from secpack.format import cbor

LIMITS = {"max_bytes": 1 << 20, "max_depth": 8, "max_items": 10_000}


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
