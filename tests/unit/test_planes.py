"""Byte planes: the C helper and the numpy path write identical bytes, and both
invert exactly. Where the helper was built, both paths are exercised here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secpack.codec import planes

PATHS = ["native", "numpy"] if planes.NATIVE else ["numpy"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "numpy":
        monkeypatch.setattr(planes, "_native", None)
    yield request.param


def _split(data: bytes, width: int, rotate: bool) -> bytes:
    out = bytearray(len(data))
    planes.split(data, memoryview(out), width, rotate)
    return bytes(out)


def _merge(grid: bytes, width: int, rotate: bool) -> bytes:
    n = len(grid) // width
    parts = [memoryview(grid)[k * n : (k + 1) * n] for k in range(width)]
    out = bytearray(len(grid))
    planes.merge(parts, memoryview(out), width, rotate)
    return bytes(out)


def _reference(data: bytes, width: int, rotate: bool) -> bytes:
    """Plane bytes computed element by element with Python integers."""
    n = len(data) // width
    out = bytearray(len(data))
    bits = 8 * width
    for i in range(n):
        v = int.from_bytes(data[i * width : (i + 1) * width], "little")
        if rotate:
            v = ((v << 1) | (v >> (bits - 1))) & ((1 << bits) - 1)
        for k in range(width):
            out[k * n + i] = (v >> (8 * k)) & 0xFF
    return bytes(out)


@settings(max_examples=150)
@given(st.sampled_from([2, 4, 8]), st.booleans(), st.data())
def test_split_matches_the_definition_and_merge_inverts_it(
    width: int, rotate: bool, data: st.DataObject
) -> None:
    count = data.draw(st.integers(min_value=0, max_value=300))
    raw = data.draw(st.binary(min_size=width * count, max_size=width * count))
    expected = _reference(raw, width, rotate)
    for use_native in [True, False] if planes.NATIVE else [False]:
        saved = planes._native
        if not use_native:
            planes._native = None
        try:
            grid = _split(raw, width, rotate)
            assert grid == expected
            assert _merge(grid, width, rotate) == raw
        finally:
            planes._native = saved


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("rotate", [False, True])
def test_large_buffers_round_trip(path: str, width: int, rotate: bool) -> None:
    # Longer than the numpy path's block, with a partial last block.
    raw = np.random.default_rng(width).integers(0, 256, width * 100_003, dtype=np.uint8).tobytes()
    grid = _split(raw, width, rotate)
    assert _merge(grid, width, rotate) == raw
    # The rotation puts the top bit of every element into plane 0's low bit.
    n = len(raw) // width
    top = np.frombuffer(raw, np.uint8)[width - 1 :: width] >> 7
    low = np.frombuffer(grid, np.uint8)[:n] & 1
    if rotate:
        assert np.array_equal(low, top)


@pytest.mark.parametrize(
    ("src_len", "dst_len", "width"),
    [(8, 8, 3), (8, 8, 1), (6, 6, 4), (8, 4, 4), (8, 12, 4)],
)
def test_split_refuses_inconsistent_sizes(
    path: str, src_len: int, dst_len: int, width: int
) -> None:
    with pytest.raises(ValueError):
        planes.split(bytes(src_len), memoryview(bytearray(dst_len)), width, True)


def test_merge_refuses_inconsistent_planes(path: str) -> None:
    out = memoryview(bytearray(16))
    with pytest.raises(ValueError):
        planes.merge([b"\0" * 4] * 3, out, 4, True)  # too few planes
    with pytest.raises(ValueError):
        planes.merge([b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 5], out, 4, True)
    with pytest.raises(ValueError):
        planes.merge([b"\0" * 4] * 4, memoryview(bytearray(15)), 4, True)


def test_merge_refuses_a_read_only_output(path: str) -> None:
    with pytest.raises((TypeError, ValueError)):
        planes.merge([b"\0" * 4] * 4, memoryview(bytes(16)), 4, True)


@pytest.mark.skipif(
    os.environ.get("SECPACK_REQUIRE_NATIVE") != "1",
    reason="set SECPACK_REQUIRE_NATIVE=1 where the C helper must have been built",
)
def test_the_c_helper_was_built() -> None:
    # `make test` sets the variable: a build that silently fell back to numpy
    # would pass every other test while running several times slower.
    assert planes.NATIVE
