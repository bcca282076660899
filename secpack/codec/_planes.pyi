# Type stub for the C helper secpack/codec/_planes.c.
from collections.abc import Sequence
from typing import Any

def split(src: bytes | memoryview, dst: memoryview, width: int, rotate: bool, /) -> None: ...
def merge(
    planes: Sequence[bytes | memoryview], dst: memoryview, width: int, rotate: bool, /
) -> None: ...
def bgx_split(
    src: bytes | memoryview,
    kind: int,
    lo: int,
    span: int,
    offsets: bytes,
    h: memoryview,
    low: memoryview,
    b1: memoryview,
    b0: memoryview,
    x: memoryview,
    /,
) -> int: ...
def bgx_merge(
    h: bytes | bytearray | memoryview,
    low: bytes | bytearray | memoryview,
    b1: bytes | bytearray | memoryview,
    b0: bytes | bytearray | memoryview,
    x: bytes | bytearray | memoryview,
    offsets: bytes | bytearray | memoryview,
    dst: memoryview,
    kind: int,
    lo: int,
    span: int,
    /,
) -> None: ...
def pack5(src: bytes | memoryview, dst: bytearray | memoryview, /) -> None: ...
def unpack5(src: bytes | memoryview, dst: bytearray | memoryview, /) -> None: ...
def entropy(buf: bytes | bytearray | memoryview, step: int, /) -> float: ...
def ans_encode(
    freqs: bytes, src: bytes | bytearray | memoryview, out: bytearray | memoryview, /
) -> int: ...
def ans_decode(
    freqs: bytes, src: bytes | bytearray | memoryview, dst: bytearray | memoryview, /
) -> None: ...
def histogram(buf: bytes | bytearray | memoryview, counts: Any, /) -> None: ...
def simd(on: int = -1, /) -> bool: ...
def bgx_analyze(src: bytes | memoryview, kind: int, period: int, /) -> tuple[int, int, bytes]: ...
def ans_quantize(counts: Any, /) -> bytes: ...
